"""Recipes: TOML files that declare a payload, loaded into frozen dataclasses.

The dataclasses below are the schema. `load_recipe` walks them field by field, so an unknown key,
a wrong type or a missing field is reported with the file, the dotted key and what was expected,
and nothing else in the code has to check the shape of a recipe again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

from buildkit.errors import UserError

RECIPE_FILE = "recipe.toml"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
# Environment names that hold a secret's value; the recipe must pass a file path instead.
SECRET_ENV_RE = re.compile(r"TOKEN|SECRET|PASSW|PASSPHRASE|PRIVATE_KEY|API_KEY|CREDENTIAL", re.IGNORECASE)
SECRET_MOUNT = "/run/secrets/"


@dataclass(frozen=True)
class ServiceUser:
    """The non-root account the payload runs as, on the device and in the sandbox."""

    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class Secret:
    """A secret the payload reads from a file. The recipe names where the file is on the device
    (provisioned next to the apkovl, never inside it); the sandbox binds it read-only at
    /run/secrets/<name>."""

    file: str
    description: str = ""


@dataclass(frozen=True)
class TelemetryHost:
    address: str
    port: int
    proto: Literal["tcp", "udp"] = "tcp"


@dataclass(frozen=True)
class Egress:
    """Where the device may connect to. Addresses, not names: the firewall is loaded before DNS."""

    dns: tuple[str, ...] = ("1.1.1.1", "9.9.9.9")
    ntp: tuple[str, ...] = ("162.159.200.1", "162.159.200.123")
    telemetry: tuple[TelemetryHost, ...] = ()


@dataclass(frozen=True)
class Waiver:
    """A recipe-level waiver, merged with those shipped in verify/waivers/."""

    id: str
    rule: str
    reason: str
    path: str = "*"
    symbol: str = "*"


@dataclass(frozen=True)
class Gate:
    profile: str = "pi1"
    scan_code: bool = False
    waivers: tuple[Waiver, ...] = ()


@dataclass(frozen=True)
class GoSettings:
    package: str = "."
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class PythonSettings:
    base: Literal["debian-bookworm-armel", "debian-bookworm-armhf", "alpine-armhf"] = "debian-bookworm-armel"
    backend: Literal["native", "docker"] = "native"
    packages: tuple[str, ...] = ("python3-minimal",)
    requirements: tuple[str, ...] = ()
    # Debian packages the docker backend adds to the ARM container that builds source distributions
    # (headers, libraries, build tools such as cython3); they never reach the payload.
    build_packages: tuple[str, ...] = ()
    mirror: str = "http://deb.debian.org/debian"


@dataclass(frozen=True)
class Run:
    """How the payload starts on the device."""

    entrypoint: str
    user: ServiceUser
    args: tuple[str, ...] = ()
    port: int = 8080
    writable: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    name: str
    version: str
    kind: Literal["go", "python"]
    source: str
    run: Run
    hostname: str = ""
    description: str = ""
    secrets: dict[str, Secret] = field(default_factory=dict)
    egress: Egress = Egress()
    gate: Gate = Gate()
    go: GoSettings = GoSettings()
    python: PythonSettings = PythonSettings()
    # Set by the loader, not read from TOML.
    path: Path = field(default=Path(), metadata={"internal": True})
    sha256: str = field(default="", metadata={"internal": True})

    @property
    def source_dir(self) -> Path:
        return (self.path.parent / self.source).resolve()

    @property
    def overlay_hostname(self) -> str:
        return self.hostname or self.name


def resolve_recipe_path(arg: Path) -> Path:
    """A recipe is named by its TOML file or by the directory that holds `recipe.toml`."""
    candidate = arg / RECIPE_FILE if arg.is_dir() else arg
    if not candidate.is_file():
        where = f"{arg}/{RECIPE_FILE}" if arg.is_dir() else str(arg)
        raise UserError(f"{where}: no such recipe file")
    return candidate


def load_recipe(arg: Path) -> Recipe:
    path = resolve_recipe_path(arg)
    raw = path.read_bytes()
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid TOML: {exc}") from None
    recipe = _build(Recipe, data, _Where(path, ""))
    recipe = dataclasses.replace(recipe, path=path.resolve(), sha256=hashlib.sha256(raw).hexdigest())
    _check_semantics(recipe, _Where(path, ""))
    return recipe


@dataclass(frozen=True)
class _Where:
    file: Path
    key: str

    def child(self, key: str) -> _Where:
        return _Where(self.file, f"{self.key}.{key}" if self.key else key)

    def error(self, message: str) -> UserError:
        return UserError(f"{self.file}: {self.key or '(top level)'}: {message}")


def _build(cls: type, data: Any, where: _Where) -> Any:
    if not isinstance(data, dict):
        raise where.error(f"expected a table, got {_type_name(data)}{_TABLE_HINTS.get(cls, '')}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise where.child(unknown[0]).error(f"unknown key; expected one of: {', '.join(sorted(fields))}")
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = _convert(hints[name], data[name], where.child(name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise where.child(name).error(f"missing; expected {_describe(hints[name])}")
    return cls(**values)


_TABLE_HINTS = {Secret: " (secrets are referenced by file, never inline: [secrets.NAME] file = \"/path/on/device\")"}


def _convert(hint: Any, value: Any, where: _Where) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin is Literal:
        if value not in args:
            raise where.error(f"expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise where.error(f"expected {_describe(hint)}, got {_type_name(value)}")
        return tuple(_convert(args[0], item, where.child(str(i))) for i, item in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise where.error(f"expected {_describe(hint)}, got {_type_name(value)}")
        return {k: _convert(args[1], v, where.child(k)) for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        raise TypeError(f"unsupported schema type {hint}")
    if hint is bool or hint is str:
        if type(value) is not hint:
            raise where.error(f"expected {_describe(hint)}, got {_type_name(value)}")
        return value
    if hint is int:
        if type(value) is not int:
            raise where.error(f"expected an integer, got {_type_name(value)}")
        return value
    raise TypeError(f"unsupported schema type {hint}")


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return "a table"
    if origin is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    if origin is tuple:
        return f"an array of {_describe(typing.get_args(hint)[0])}"
    if origin is dict:
        return f"a table of {_describe(typing.get_args(hint)[1])}"
    return {str: "a string", int: "an integer", bool: "true or false"}.get(hint, str(hint))


def _type_name(value: Any) -> str:
    return {dict: "a table", list: "an array", str: "a string", int: "an integer", bool: "a boolean",
            float: "a float"}.get(type(value), type(value).__name__)


def _check_semantics(recipe: Recipe, where: _Where) -> None:
    if not NAME_RE.match(recipe.name):
        raise where.child("name").error("expected lowercase letters, digits and '-', at most 63 characters")
    if recipe.hostname and not NAME_RE.match(recipe.hostname):
        raise where.child("hostname").error("expected a host name: lowercase letters, digits and '-'")
    if not recipe.source_dir.is_dir():
        raise where.child("source").error(f"directory {recipe.source_dir} does not exist")
    run = where.child("run")
    if recipe.run.user.uid == 0 or recipe.run.user.gid == 0:
        raise run.child("user").error("the payload must not run as root (uid and gid must be non-zero)")
    if not 1 <= recipe.run.port <= 65535 or recipe.run.port in (80,):
        raise run.child("port").error("expected a TCP port from 1 to 65535 other than 80 (80 is redirected to it)")
    for i, p in enumerate(recipe.run.writable):
        if not _is_clean_abspath(p):
            raise run.child("writable").child(str(i)).error(f"expected an absolute path without '..', got {p!r}")
    if not _is_clean_abspath(recipe.run.entrypoint):
        raise run.child("entrypoint").error(f"expected an absolute path inside the payload, got {recipe.run.entrypoint!r}")
    for key, value in recipe.run.env.items():
        if SECRET_ENV_RE.search(key) and not value.startswith(SECRET_MOUNT):
            raise run.child("env").child(key).error(
                f"looks like a secret: declare it under [secrets.NAME] with a file and pass its path "
                f"({SECRET_MOUNT}NAME), never the value")
    for name, secret in recipe.secrets.items():
        if not re.match(r"^[A-Za-z0-9_.-]+$", name):
            raise where.child("secrets").child(name).error("secret names may use letters, digits, '_', '.', '-'")
        if not _is_clean_abspath(secret.file):
            raise where.child("secrets").child(name).child("file").error("expected an absolute path on the device")
    egress = where.child("egress")
    for key in ("dns", "ntp"):
        for i, addr in enumerate(getattr(recipe.egress, key)):
            _check_address(addr, egress.child(key).child(str(i)))
    for i, host in enumerate(recipe.egress.telemetry):
        _check_address(host.address, egress.child("telemetry").child(str(i)).child("address"))
        if not 1 <= host.port <= 65535:
            raise egress.child("telemetry").child(str(i)).child("port").error("expected a port from 1 to 65535")


def _is_clean_abspath(p: str) -> bool:
    pure = PurePosixPath(p)
    return pure.is_absolute() and ".." not in pure.parts


def _check_address(addr: str, where: _Where) -> None:
    try:
        ipaddress.ip_network(addr, strict=False)
    except ValueError:
        raise where.error(f"expected an IP address or network (the firewall loads before DNS), got {addr!r}") from None
