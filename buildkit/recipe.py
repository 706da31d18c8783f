"""Recipes: TOML files that declare a payload, loaded into frozen dataclasses and checked once.

The dataclasses below are the schema (buildkit/schema.py walks them), and `load_recipe` is the
one place where a recipe is checked: every rule a recipe must satisfy, for the build and for the
package alike, is applied here with the file, the dotted key and what was expected. Stages receive
a recipe that is already valid. The table of the payload's kind (`[go]`, `[python]`) belongs to the
kind's module (buildkit/build/kinds.py), which says what it accepts.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from buildkit.archgate.profile import Waiver
from buildkit.build.kinds import KINDS, kind_module
from buildkit.errors import UserError
from buildkit.features import available_features, base_accounts
from buildkit.schema import Where, from_table, read_toml
from buildkit.target import DEFAULT_PROFILE, Target, load_target

RECIPE_FILE = "recipe.toml"
NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# Environment names that hold a secret's value; the recipe must pass a file path instead.
SECRET_ENV_RE = re.compile(r"TOKEN|SECRET|PASSW|PASSPHRASE|PRIVATE_KEY|API_KEY|CREDENTIAL", re.IGNORECASE)
SECRET_MOUNT = "/run/secrets/"
SECRET_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
# The boot script splits these on whitespace and matches them with awk: keep them to plain words.
DEVICE_WORD_RE = re.compile(r"[A-Za-z0-9._/-]+")
VERSION_RE = re.compile(r"[A-Za-z0-9._+~-]+")
USER_NAME_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# What bwrap mounts itself in the sandbox: a recipe's writable path may not be there.
RESERVED_SANDBOX_PATHS = ("/proc", "/dev", "/run")
HTTP_PORT = 80


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

    TABLE_HINT = ' (secrets are referenced by file, never inline: [secrets.NAME] file = "/path/on/device")'

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
class Gate:
    profile: str = DEFAULT_PROFILE
    scan_code: bool = False
    waivers: tuple[Waiver, ...] = ()


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
class Device:
    """Device components beyond the payload: overlay features (rootfs/features/<name>/)."""

    features: tuple[str, ...] = ()


# --- [smoke]: what `buildkit smoke` checks of this service, besides the platform checks ---------

# Set in the payload's environment when the recipe declares [smoke.zombies]: a service serves its
# process-spawning endpoint only then (the reference services do), never by default.
SMOKE_ZOMBIES_ENV = "BUILDKIT_SMOKE_ZOMBIES"
REPORT_WORD_RE = re.compile(r"[!-~]*")  # printable ASCII without spaces: one word in the smoke report


@dataclass(frozen=True)
class HttpProbe:
    """One request sent through port 80, and the answer it must get."""

    path: str
    name: str = ""  # the check is reported as http:NAME (default: http:PATH)
    method: Literal["GET", "HEAD", "POST", "PUT", "DELETE"] = "GET"
    status: int = 200
    body_contains: str = ""  # a substring the body must hold ("": the status is enough)
    token_secret: str = ""  # a [secrets.NAME]: smoke provisions a token there and sends it as a bearer token

    @property
    def check_name(self) -> str:
        return f"http:{self.name or self.path}"


@dataclass(frozen=True)
class LogWindowProbe:
    """A token-protected window of request records: 401 without the token and with a wrong one; with
    it, the record of a request that carried secrets (query, Authorization, Cookie), redacted."""

    path: str
    token_secret: str
    request_path: str = "/"  # where the request carrying the test secrets goes
    max_record_bytes: int | None = None  # the window's bound on one record: checked on every record


@dataclass(frozen=True)
class ZombieProbe:
    """An endpoint that starts processes which leave orphans behind: once they exit, none may remain
    under the sandbox's PID 1, zombies least of all."""

    path: str


@dataclass(frozen=True)
class Smoke:
    http: tuple[HttpProbe, ...] = ()
    log_window: LogWindowProbe | None = None
    zombies: ZombieProbe | None = None

    @property
    def payload_env(self) -> dict[str, str]:
        return {SMOKE_ZOMBIES_ENV: "1"} if self.zombies else {}


def check_smoke(recipe: Recipe, where: Where) -> None:
    smoke = recipe.smoke
    names: set[str] = set()
    for i, probe in enumerate(smoke.http):
        at = where.child("http").child(i)
        _check_request_path(probe.path, at.child("path"))
        if not REPORT_WORD_RE.fullmatch(probe.name):
            raise at.child("name").error(f"{probe.name!r}: one word of printable characters, no spaces")
        if probe.check_name in names:
            raise at.child("name").error(f"a second probe reported as {probe.check_name}: give each a name")
        names.add(probe.check_name)
        if not 100 <= probe.status <= 599:
            raise at.child("status").error(f"expected an HTTP status from 100 to 599, got {probe.status}")
        _check_token_secret(recipe, probe.token_secret, at.child("token_secret"))
    if smoke.log_window is not None:
        _check_log_window(recipe, smoke.log_window, where.child("log_window"))
    if smoke.zombies is not None:
        _check_request_path(smoke.zombies.path, where.child("zombies").child("path"))


def _check_log_window(recipe: Recipe, window: LogWindowProbe, where: Where) -> None:
    _check_request_path(window.path, where.child("path"))
    _check_request_path(window.request_path, where.child("request_path"))
    if "?" in window.request_path:
        raise where.child("request_path").error("no query: smoke adds the test secrets as the query")
    _check_token_secret(recipe, window.token_secret, where.child("token_secret"))
    if window.max_record_bytes is not None and window.max_record_bytes < 1:
        raise where.child("max_record_bytes").error(f"expected a positive size, got {window.max_record_bytes}")


def _check_request_path(path: str, where: Where) -> None:
    if not path.startswith("/") or not REPORT_WORD_RE.fullmatch(path):
        raise where.error(f"expected a path starting with '/', printable characters and no spaces, got {path!r}")


def _check_token_secret(recipe: Recipe, name: str, where: Where) -> None:
    if name and name not in recipe.secrets:
        declared = ", ".join(sorted(recipe.secrets)) or "none"
        raise where.error(f"{name!r} is not a declared [secrets.NAME] (declared: {declared})")


# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    name: str
    version: str
    kind: str
    source: str
    run: Run
    hostname: str = ""
    description: str = ""
    secrets: dict[str, Secret] = field(default_factory=dict)
    egress: Egress = Egress()
    gate: Gate = Gate()
    device: Device = Device()
    smoke: Smoke = Smoke()
    # Set by the loader, not read from TOML.
    settings: Any = field(kw_only=True, metadata={"internal": True})  # the kind's table, as its module reads it
    target: Target = field(kw_only=True, metadata={"internal": True})  # the board of `gate.profile`
    path: Path = field(kw_only=True, metadata={"internal": True})
    sha256: str = field(kw_only=True, metadata={"internal": True})

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
    path = resolve_recipe_path(arg).resolve()
    raw = path.read_bytes()
    data = read_toml(path)
    where = Where(path)
    settings = _kind_settings(data, where)
    profile = _profile_name(data, where)
    recipe = from_table(
        Recipe,
        data,
        where,
        settings=settings,
        target=load_target(profile, path.parent),
        path=path,
        sha256=hashlib.sha256(raw).hexdigest(),
    )
    check_recipe(recipe, where)
    return recipe


def _kind_settings(data: dict[str, Any], where: Where) -> Any:
    """Take the kind's own table out of `data` and read it with the kind's schema."""
    kind = data.get("kind")
    if kind not in KINDS:
        shown = repr(kind) if isinstance(kind, str) else "nothing" if kind is None else f"{kind!r}"
        raise where.child("kind").error(f"expected one of {', '.join(map(repr, KINDS))}, got {shown}")
    for other in KINDS:
        if other != kind and other in data:
            raise where.child(other).error(
                f"a [{other}] table is only for kind = {other!r} recipes; this one is kind = {kind!r}"
            )
    module = kind_module(kind)
    return from_table(module.Settings, data.pop(kind, {}), where.child(kind))


def _profile_name(data: dict[str, Any], where: Where) -> str:
    """`gate.profile` ahead of the rest: the target it names is part of the recipe."""
    gate = data.get("gate", {})
    profile = gate.get("profile", DEFAULT_PROFILE) if isinstance(gate, dict) else DEFAULT_PROFILE
    if not isinstance(profile, str):
        raise where.child("gate").child("profile").error("expected a string: a profile name or a TOML file")
    return profile


def check_recipe(recipe: Recipe, where: Where) -> None:
    """Every rule a recipe must satisfy beyond its types, in the order of the file."""
    _check_identity(recipe, where)
    _check_run(recipe, where.child("run"))
    _check_secrets(recipe, where.child("secrets"))
    _check_egress(recipe.egress, where.child("egress"))
    _check_device(recipe.device, where.child("device"))
    check_smoke(recipe, where.child("smoke"))
    kind_module(recipe.kind).check(recipe, where.child(recipe.kind))


def _check_identity(recipe: Recipe, where: Where) -> None:
    if not NAME_RE.fullmatch(recipe.name):
        raise where.child("name").error("expected lowercase letters, digits and '-', at most 63 characters")
    if not VERSION_RE.fullmatch(recipe.version):
        raise where.child("version").error(f"{recipe.version!r}: use letters, digits and . _ + ~ - only")
    if recipe.hostname and not NAME_RE.fullmatch(recipe.hostname):
        raise where.child("hostname").error("expected a host name: lowercase letters, digits and '-'")
    if not recipe.source_dir.is_dir():
        raise where.child("source").error(f"directory {recipe.source_dir} does not exist")


def _check_run(recipe: Recipe, where: Where) -> None:
    run = recipe.run
    _check_user(run.user, where.child("user"))
    if not 1 <= run.port <= 65535 or run.port == HTTP_PORT:
        raise where.child("port").error("expected a TCP port from 1 to 65535 other than 80 (80 is redirected to it)")
    for i, path in enumerate(run.writable):
        _check_writable(path, where.child("writable").child(i))
    if not _is_clean_abspath(run.entrypoint) or run.entrypoint == "/":
        raise where.child("entrypoint").error(f"expected an absolute path inside the payload, got {run.entrypoint!r}")
    for key, value in run.env.items():
        if not ENV_NAME_RE.fullmatch(key):
            raise where.child("env").child(key).error("not a valid environment variable name")
        if SECRET_ENV_RE.search(key) and not value.startswith(SECRET_MOUNT):
            raise (
                where.child("env")
                .child(key)
                .error(
                    f"looks like a secret: declare it under [secrets.NAME] with a file and pass its path "
                    f"({SECRET_MOUNT}NAME), never the value"
                )
            )


def _check_user(user: ServiceUser, where: Where) -> None:
    if user.uid == 0 or user.gid == 0:
        raise where.error("the payload must not run as root (uid and gid must be non-zero)")
    if not USER_NAME_RE.fullmatch(user.name):
        raise where.child("name").error(f"{user.name!r} is not a valid user name (lowercase, digits, '_', '-')")
    taken_users, taken_groups = base_accounts()
    if user.name in taken_users.values() or user.uid in taken_users:
        raise where.error(
            f"{user.name}/{user.uid} clashes with Alpine's base account "
            f"{taken_users.get(user.uid, user.name)}: pick another name and a uid from 1000"
        )
    if user.gid in taken_groups or user.name in taken_groups.values():
        raise where.child("gid").error(
            f"gid {user.gid} or group {user.name} is taken by Alpine's base group "
            f"{taken_groups.get(user.gid, user.name)}: pick another from 1000"
        )


def _check_writable(path: str, where: Where) -> None:
    if not _is_clean_abspath(path):
        raise where.error(f"expected an absolute path without '..', got {path!r}")
    if not DEVICE_WORD_RE.fullmatch(path) or path == "/" or _under(path, RESERVED_SANDBOX_PATHS):
        raise where.error(
            f"{path!r}: expected a path of plain characters [A-Za-z0-9._/-], not / and not under "
            f"{', '.join(RESERVED_SANDBOX_PATHS)}"
        )


def _check_secrets(recipe: Recipe, where: Where) -> None:
    for name, secret in recipe.secrets.items():
        if not SECRET_NAME_RE.fullmatch(name):
            raise where.child(name).error("secret names may use letters, digits, '_', '.', '-'")
        if not _is_clean_abspath(secret.file):
            raise where.child(name).child("file").error("expected an absolute path on the device")
        if not DEVICE_WORD_RE.fullmatch(secret.file):
            raise where.child(name).child("file").error(f"{secret.file!r}: use plain characters [A-Za-z0-9._/-]")


def _check_egress(egress: Egress, where: Where) -> None:
    for key in ("dns", "ntp"):
        for i, addr in enumerate(getattr(egress, key)):
            _check_address(addr, where.child(key).child(i))
    for i, host in enumerate(egress.telemetry):
        _check_address(host.address, where.child("telemetry").child(i).child("address"))
        if not 1 <= host.port <= 65535:
            raise where.child("telemetry").child(i).child("port").error("expected a port from 1 to 65535")


def _check_device(device: Device, where: Where) -> None:
    known = available_features()
    for i, name in enumerate(device.features):
        if name not in known:
            raise (
                where.child("features")
                .child(i)
                .error(f"{name!r} is not a device feature; expected one of: {', '.join(sorted(known)) or 'none'}")
            )


def _is_clean_abspath(p: str) -> bool:
    pure = PurePosixPath(p)
    return p.startswith("/") and pure.is_absolute() and ".." not in pure.parts


def _under(path: str, roots: Iterable[str]) -> bool:
    pure = PurePosixPath(path)
    return any(pure == PurePosixPath(root) or PurePosixPath(root) in pure.parents for root in roots)


def _check_address(addr: str, where: Where) -> None:
    try:
        ipaddress.ip_network(addr, strict=False)
    except ValueError:
        raise where.error(f"expected an IP address or network (the firewall loads before DNS), got {addr!r}") from None
