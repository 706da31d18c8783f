"""Recipes: TOML files that declare a payload, loaded into frozen dataclasses and checked once.

The dataclasses below are the schema (buildkit/schema.py walks them), and `load_recipe` is the
one place where a recipe is checked: every rule a recipe must satisfy, for the build and for the
package alike, is applied here with the file, the dotted key and what was expected. Stages receive
a recipe that is already valid. The table of the payload's kind (`[go]`, `[python]`) belongs to the
kind's module (buildkit/build/kinds.py), which says what it accepts.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import posixpath
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from buildkit.archgate.profile import Waiver
from buildkit.build.kinds import KINDS, kind_module
from buildkit.errors import UserError
from buildkit.features import available_features, base_accounts
from buildkit.resources import VERIFY_DIR
from buildkit.schema import Invalid, Where, from_table, read_toml
from buildkit.seccomp import unknown_on_arm
from buildkit.source import DEFAULT_POLICY, SourcePolicy, confine, source_entries
from buildkit.target import DEFAULT_PROFILE, Target, load_target

RECIPE_FILE = "recipe.toml"
NAME_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
SECRET_MOUNT = "/run/secrets/"
# What a secret written into env or args looks like (names, known prefixes, token shapes): data.
SECRET_PATTERNS_FILE = VERIFY_DIR / "secrets.toml"
SECRET_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
# The boot script splits these on whitespace and matches them with awk: keep them to plain words.
DEVICE_WORD_RE = re.compile(r"[A-Za-z0-9._/-]+")
VERSION_RE = re.compile(r"[A-Za-z0-9._+~-]+")
USER_NAME_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# What bwrap mounts itself in the sandbox: a recipe's writable path may not be there.
RESERVED_SANDBOX_PATHS = ("/proc", "/dev", "/run")
HTTP_PORT = 80
# Service ids: 0 is root, 65534 is nobody, 65535 is (uid_t)-1 in 16 bits; above, setpriv and the
# kernel's 16-bit interfaces truncate (2^32 became uid 0 on the device).
SERVICE_ID_RANGE = range(1, 65534)
# A destination network this wide is "anywhere": it needs egress.allow_any = true.
CATCH_ALL_PREFIX = {4: 8, 6: 16}


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
    allow_any: bool = False  # a network wider than /8 (IPv4) or /16 (IPv6) is refused without it


def check_bounds(table: Any, bounds: dict[str, tuple[int, int]]) -> None:
    """Each integer field named in `bounds` within its (low, high), else Invalid for its key."""
    for key, (low, high) in bounds.items():
        if not low <= getattr(table, key) <= high:
            raise Invalid(key, f"expected an integer from {low} to {high}, got {getattr(table, key)}")


# [firewall]: each number's allowed range. The defaults suit a Pi 1B serving the Internet directly.
FIREWALL_BOUNDS = {
    "new_per_second": (1, 10_000),
    "new_burst": (1, 100_000),
    "connections_per_source": (1, 65_535),
    "connections_total": (1, 65_535),
    "ipv6_source_prefix": (32, 64),  # coarser than /32 lumps whole providers; finer than /64 is one host
}


@dataclass(frozen=True)
class Firewall:
    """The numbers of the device's nftables ruleset (rootfs/features/firewall/). A source is an IPv4
    address or an IPv6 prefix of `ipv6_source_prefix` bits: one host holds 2^64 IPv6 addresses."""

    new_per_second: int = 20  # new connections a source may open per second once its burst is spent
    new_burst: int = 40
    connections_per_source: int = 32  # connections a source may hold open at once (conntrack count)
    connections_total: int = 512  # connections all sources together may hold open to the service
    ipv6_source_prefix: int = 64

    def validate(self) -> None:
        check_bounds(self, FIREWALL_BOUNDS)
        if self.connections_per_source > self.connections_total:
            raise Invalid("connections_per_source", "more than connections_total: one source could take every slot")


@dataclass(frozen=True)
class Gate:
    profile: str = DEFAULT_PROFILE
    scan_code: bool = True  # false skips the code scan, for speed only: the report says so
    waivers: tuple[Waiver, ...] = ()


# The sandbox's bounds (README: "The sandbox"): low, high for each number of [run.limits].
LIMIT_BOUNDS = {
    "processes": (8, 4096),
    "open_files": (16, 65536),
    "address_space_mb": (64, 3072),  # 3 GiB: all an ARM process can address
    "tmpfs_mb": (1, 1024),
    "tmpfs_total_mb": (1, 1024),
}
# The tmpfs of the sandbox live in the RAM that also holds Alpine's diskless root, its packages and
# the payload's own memory: together they may take at most this fraction of the board's RAM.
TMPFS_RAM_FRACTION = 4
SANDBOX_TMP = "/tmp"


@dataclass(frozen=True)
class Limits:
    """[run.limits]: rlimits of every process in the sandbox, the size of each tmpfs (/tmp and the
    writable paths) and the syscalls allowed beyond the kind's seccomp policy (verify/seccomp/)."""

    processes: int = 64  # RLIMIT_NPROC: tasks (threads included) of the service user
    open_files: int = 1024  # RLIMIT_NOFILE
    address_space_mb: int = 768  # RLIMIT_AS: Go's 32-bit runtime reserves 516 MiB of it at start
    tmpfs_mb: int = 16  # each tmpfs, unless `tmpfs` gives its path another size
    tmpfs: dict[str, int] = field(default_factory=dict)  # path → MiB, for /tmp or a writable path
    tmpfs_total_mb: int = 64  # all of them together; at most 1/TMPFS_RAM_FRACTION of the board's RAM
    syscalls: tuple[str, ...] = ()  # ARM EABI syscall names added to the seccomp allow-list

    def validate(self) -> None:
        for key, (low, high) in LIMIT_BOUNDS.items():
            if not low <= getattr(self, key) <= high:
                raise Invalid(key, f"expected an integer from {low} to {high}, got {getattr(self, key)}")


@dataclass(frozen=True)
class Run:
    """How the payload starts on the device."""

    entrypoint: str
    user: ServiceUser
    args: tuple[str, ...] = ()
    port: int = 8080
    writable: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    limits: Limits = Limits()

    def tmpfs_sizes(self) -> dict[str, int]:
        """MiB of every tmpfs the sandbox mounts for storage: /tmp first, then the writable paths."""
        return {path: self.limits.tmpfs.get(path, self.limits.tmpfs_mb) for path in (SANDBOX_TMP, *self.writable)}


@dataclass(frozen=True)
class Device:
    """Device components beyond the payload: overlay features (rootfs/features/<name>/)."""

    features: tuple[str, ...] = ()


# [attest]: the device agent of rootfs/features/attest/ (README, "Remote attestation").
ATTEST_FEATURE = "attest"
ATTEST_BOUNDS = {"interval_s": (10, 86_400), "grace_s": (0, 7 * 86_400)}
ATTEST_SCHEMES = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Attest:
    """Where the device reports what it booted, and what it does when no verdict comes."""

    verifier: str  # http(s)://ADDRESS[:PORT]: an IP address, the firewall loads before DNS
    verifier_key: str  # the verifier's minisign public key (the base64 line of its .pub file)
    interval_s: int = 300  # between two reports, after the first one at boot
    policy: Literal["fail_open", "fail_closed"] = "fail_closed"  # when no valid verdict comes
    grace_s: int = 900  # fail_closed: how long without a valid verdict before the device quarantines itself

    def validate(self) -> None:
        check_bounds(self, ATTEST_BOUNDS)
        self.endpoint()
        try:
            blob = base64.b64decode(self.verifier_key, validate=True)
        except binascii.Error:
            blob = b""
        if len(blob) != 42 or blob[:2] != b"Ed":
            raise Invalid("verifier_key", "expected a minisign public key: the base64 line of the verifier's .pub file")

    def endpoint(self) -> tuple[str, str, int]:
        """(scheme, address, port) of `verifier`; Invalid when it is not an http(s) URL of an IP address."""
        match = re.fullmatch(r"(https?)://(\[[0-9a-fA-F:.]+\]|[0-9.]+)(?::([0-9]{1,5}))?/?", self.verifier)
        try:
            if match is None:
                raise ValueError
            address = str(ipaddress.ip_address(match.group(2).strip("[]")))
            port = int(match.group(3) or ATTEST_SCHEMES[match.group(1)])
            if not 1 <= port <= 65535:
                raise ValueError
        except ValueError:
            raise Invalid(
                "verifier",
                f"expected http(s)://IP-ADDRESS[:PORT] (the firewall loads before DNS), got {self.verifier!r}",
            ) from None
        return match.group(1), address, port


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


# [smoke.slow_clients]: each number's allowed range (the check is bounded whatever the recipe says).
SLOW_CLIENTS_BOUNDS = {"connections": (1, 1000), "answer_within_ms": (100, 60_000)}


@dataclass(frozen=True)
class SlowClientsProbe:
    """Slow clients (slowloris): `connections` connections that each send the start of a request,
    then a header line now and then; while they do, `path` must answer 200 within `answer_within_ms`."""

    path: str
    connections: int = 300
    answer_within_ms: int = 2000

    def validate(self) -> None:
        check_bounds(self, SLOW_CLIENTS_BOUNDS)


@dataclass(frozen=True)
class Smoke:
    http: tuple[HttpProbe, ...] = ()
    log_window: LogWindowProbe | None = None
    zombies: ZombieProbe | None = None
    slow_clients: SlowClientsProbe | None = None

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
    if smoke.slow_clients is not None:
        _check_request_path(smoke.slow_clients.path, where.child("slow_clients").child("path"))


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
    firewall: Firewall = Firewall()
    gate: Gate = Gate()
    device: Device = Device()
    smoke: Smoke = Smoke()
    attest: Attest | None = None
    # Set by the loader, not read from TOML.
    settings: Any = field(kw_only=True, metadata={"internal": True})  # the kind's table, as its module reads it
    target: Target = field(kw_only=True, metadata={"internal": True})  # the board of `gate.profile`
    path: Path = field(kw_only=True, metadata={"internal": True})
    sha256: str = field(kw_only=True, metadata={"internal": True})
    # What the user allowed of the source tree (buildkit.source): every reader of the tree applies it.
    source_policy: SourcePolicy = field(default=DEFAULT_POLICY, kw_only=True, metadata={"internal": True})

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


def load_recipe(arg: Path, source_policy: SourcePolicy = DEFAULT_POLICY) -> Recipe:
    path = resolve_recipe_path(arg).resolve()
    raw = path.read_bytes()
    return recipe_from_table(read_toml(path), path, hashlib.sha256(raw).hexdigest(), source_policy)


def recipe_from_table(
    data: dict[str, Any],
    path: Path,
    sha256: str,
    source_policy: SourcePolicy = DEFAULT_POLICY,
    target: Target | None = None,
) -> Recipe:
    """The recipe `data` read from `path` (resolved), checked completely; the board is that of its
    `gate.profile` unless `target` is given (the fuzz tests load it once)."""
    where = Where(path)
    settings = _kind_settings(data, where)
    profile = _profile_name(data, where)
    recipe = from_table(
        Recipe,
        data,
        where,
        settings=settings,
        target=target or load_target(profile, path.parent),
        path=path,
        sha256=sha256,
        source_policy=source_policy,
    )
    check_recipe(recipe, where)
    return recipe


def _kind_settings(data: dict[str, Any], where: Where) -> Any:
    """Take the kind's own table out of `data` and read it with the kind's schema."""
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
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
    _check_attest(recipe, where)
    check_smoke(recipe, where.child("smoke"))
    kind_module(recipe.kind).check(recipe, where.child(recipe.kind))


def _check_identity(recipe: Recipe, where: Where) -> None:
    if not NAME_RE.fullmatch(recipe.name):
        raise where.child("name").error("expected lowercase letters, digits and '-', at most 63 characters")
    if not VERSION_RE.fullmatch(recipe.version):
        raise where.child("version").error(f"{recipe.version!r}: use letters, digits and . _ + ~ - only")
    if recipe.hostname and not NAME_RE.fullmatch(recipe.hostname):
        raise where.child("hostname").error("expected a host name: lowercase letters, digits and '-'")
    _check_source(recipe, where.child("source"))


def _check_source(recipe: Recipe, where: Where) -> None:
    """Confined to the recipe's directory (or one the user allowed), and readable as a source tree:
    the whole tree is walked now, so a FIFO or an oversized file stops the command before a build."""
    try:
        root = confine(recipe.path.parent / recipe.source, recipe.path.parent, recipe.source_policy)
        source_entries(root, recipe.source_policy)
    except UserError as exc:
        raise where.error(str(exc)) from None


def _check_run(recipe: Recipe, where: Where) -> None:
    run = recipe.run
    _check_user(run.user, where.child("user"))
    if not 1 <= run.port <= 65535 or run.port == HTTP_PORT:
        raise where.child("port").error("expected a TCP port from 1 to 65535 other than 80 (80 is redirected to it)")
    for i, path in enumerate(run.writable):
        _check_writable(path, where.child("writable").child(i))
    if not _is_clean_abspath(run.entrypoint) or _normal_abspath(run.entrypoint) in ("/", None):
        raise where.child("entrypoint").error(f"expected an absolute path inside the payload, got {run.entrypoint!r}")
    if _normal_abspath(run.entrypoint) != run.entrypoint:
        raise where.child("entrypoint").error(f"write it as {_normal_abspath(run.entrypoint)!r}")
    for key, value in run.env.items():
        if not ENV_NAME_RE.fullmatch(key):
            raise where.child("env").child(key).error("not a valid environment variable name")
        _check_not_secret(key, value, where.child("env").child(key))
    _check_args(run.args, where.child("args"))
    _check_limits(recipe, where.child("limits"))


def _check_limits(recipe: Recipe, where: Where) -> None:
    run, target = recipe.run, recipe.target
    low, high = LIMIT_BOUNDS["tmpfs_mb"]
    for path, size in run.limits.tmpfs.items():
        at = where.child("tmpfs").child(path)
        if path not in (SANDBOX_TMP, *run.writable):
            raise at.error(f"not a tmpfs of the sandbox: expected {SANDBOX_TMP} or a path of run.writable")
        if not low <= size <= high:
            raise at.error(f"expected a size in MiB from {low} to {high}, got {size}")
    sizes = run.tmpfs_sizes()
    total, stated = sum(sizes.values()), run.limits.tmpfs_total_mb
    if total > stated:
        listed = ", ".join(f"{path} {size}" for path, size in sizes.items())
        raise where.child("tmpfs_total_mb").error(
            f"the tmpfs take {total} MiB ({listed}), more than the {stated} MiB stated: raise it or shrink them"
        )
    if stated * TMPFS_RAM_FRACTION > target.ram_mb:
        raise where.child("tmpfs_total_mb").error(
            f"{stated} MiB is more than 1/{TMPFS_RAM_FRACTION} of the {target.ram_mb} MB of RAM of {target.board} "
            f"(profile {target.name}): at most {target.ram_mb // TMPFS_RAM_FRACTION}"
        )
    unknown = unknown_on_arm(run.limits.syscalls)
    if unknown:
        index = run.limits.syscalls.index(unknown[0])
        raise (
            where.child("syscalls")
            .child(index)
            .error(f"{unknown[0]!r} is not an ARM EABI syscall (names as libseccomp spells them, e.g. mmap2, _llseek)")
        )


# --- secrets written where a setting belongs --------------------------------------------------


@dataclass(frozen=True)
class SecretPatterns:
    """verify/secrets.toml: what a secret written into the recipe looks like."""

    names: tuple[str, ...]
    prefixes: tuple[str, ...]
    patterns: tuple[str, ...]
    min_length: int
    min_distinct: int
    min_hex_length: int

    def secret_name(self, name: str) -> bool:
        upper = name.upper()
        return any(word in upper for word in self.names)

    def token_like(self, value: str) -> bool:
        if value.startswith(self.prefixes) or any(re.search(p, value) for p in self.patterns):
            return True
        if len(value) >= self.min_hex_length and HEX_RE.fullmatch(value):
            return True
        return (
            len(value) >= self.min_length
            and TOKEN_CHARS_RE.fullmatch(value) is not None
            and all(re.search(cls, value) for cls in ("[a-z]", "[A-Z]", "[0-9]"))
            and len(set(value)) >= self.min_distinct
        )


HEX_RE = re.compile(r"[0-9a-fA-F]+")
TOKEN_CHARS_RE = re.compile(r"[A-Za-z0-9+/=_-]+")
SECRET_HINT = (
    f"declare it under [secrets.NAME] with a file on the device and pass its path ({SECRET_MOUNT}NAME), never the value"
)


@cache
def secret_patterns(path: Path = SECRET_PATTERNS_FILE) -> SecretPatterns:
    patterns = from_table(SecretPatterns, read_toml(path), Where(path))
    for i, pattern in enumerate(patterns.patterns):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise Where(path).child("patterns").child(i).error(f"not a regular expression: {exc}") from None
    return patterns


def _check_not_secret(name: str, value: str, where: Where) -> None:
    """`value`, set under `name` (an env name or a flag), must not be a secret itself."""
    if value.startswith(SECRET_MOUNT) or value == "":
        return
    patterns = secret_patterns()
    if patterns.token_like(value):
        raise where.error(f"the value looks like a credential (a token or key): {SECRET_HINT}")
    if name and patterns.secret_name(name):
        raise where.error(f"{name!r} looks like a secret: {SECRET_HINT}")


def _check_args(args: tuple[str, ...], where: Where) -> None:
    """Each arg; the value of a flag named like a secret (`-token VALUE`, `--token=VALUE`) as a secret."""
    for i, arg in enumerate(args):
        flag, has_value, inline = arg.partition("=") if arg.startswith("-") else ("", "", "")
        if has_value:
            _check_not_secret(flag.lstrip("-"), inline, where.child(i))
            continue
        previous = args[i - 1] if i > 0 and args[i - 1].startswith("-") and "=" not in args[i - 1] else ""
        name = previous.lstrip("-") if not arg.startswith("-") else ""
        _check_not_secret(name, arg, where.child(i))


def _check_user(user: ServiceUser, where: Where) -> None:
    if user.uid == 0 or user.gid == 0:
        raise where.error("the payload must not run as root (uid and gid must be non-zero)")
    for key in ("uid", "gid"):
        value = getattr(user, key)
        if value not in SERVICE_ID_RANGE:
            raise where.child(key).error(
                f"{value} is out of range: expected {SERVICE_ID_RANGE.start} to {SERVICE_ID_RANGE.stop - 1} "
                "(0 is root, 65534 nobody, larger ids are truncated on the device); pick one from 1000"
            )
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
    normal = _normal_abspath(path)
    if not DEVICE_WORD_RE.fullmatch(path) or normal in ("/", None) or _under(str(normal), RESERVED_SANDBOX_PATHS):
        raise where.error(
            f"{path!r}: expected a path of plain characters [A-Za-z0-9._/-], not / and not under "
            f"{', '.join(RESERVED_SANDBOX_PATHS)}"
        )
    if normal != path:
        raise where.error(f"{path!r}: write it as {normal!r}")


def _check_secrets(recipe: Recipe, where: Where) -> None:
    for name, secret in recipe.secrets.items():
        if not SECRET_NAME_RE.fullmatch(name) or name in (".", ".."):
            raise where.child(name).error(
                "secret names are file names (under /run/secrets/): letters, digits, '_', '.', '-', not . or .."
            )
        if not _is_clean_abspath(secret.file):
            raise where.child(name).child("file").error("expected an absolute path on the device")
        if not DEVICE_WORD_RE.fullmatch(secret.file):
            raise where.child(name).child("file").error(f"{secret.file!r}: use plain characters [A-Za-z0-9._/-]")


def _check_egress(egress: Egress, where: Where) -> None:
    for key in ("dns", "ntp"):
        for i, addr in enumerate(getattr(egress, key)):
            _check_address(addr, where.child(key).child(i), egress.allow_any)
    for i, host in enumerate(egress.telemetry):
        _check_address(host.address, where.child("telemetry").child(i).child("address"), egress.allow_any)
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


def _check_attest(recipe: Recipe, where: Where) -> None:
    """The attest feature and its [attest] table come together."""
    selected = ATTEST_FEATURE in recipe.device.features
    if selected and recipe.attest is None:
        index = recipe.device.features.index(ATTEST_FEATURE)
        raise (
            where.child("device")
            .child("features")
            .child(index)
            .error("the attest feature needs an [attest] table (verifier, verifier_key)")
        )
    if recipe.attest is not None and not selected:
        raise where.child("attest").error(f'an [attest] table needs "{ATTEST_FEATURE}" in device.features')


def _normal_abspath(p: str) -> str | None:
    """`p` in normal form ("//proc/." is "/proc"; POSIX keeps a leading "//", the sandbox does not)."""
    if "\0" in p:
        return None
    return "/" + posixpath.normpath(p).lstrip("/")


def _is_clean_abspath(p: str) -> bool:
    pure = PurePosixPath(p)
    return p.startswith("/") and pure.is_absolute() and ".." not in pure.parts


def _under(path: str, roots: Iterable[str]) -> bool:
    pure = PurePosixPath(path)
    return any(pure == PurePosixPath(root) or PurePosixPath(root) in pure.parents for root in roots)


def _check_address(addr: str, where: Where, allow_any: bool) -> None:
    try:
        network = ipaddress.ip_network(addr, strict=False)
    except ValueError:
        raise where.error(f"expected an IP address or network (the firewall loads before DNS), got {addr!r}") from None
    if network.prefixlen < CATCH_ALL_PREFIX[network.version] and not allow_any:
        raise where.error(
            f"{addr!r} is a catch-all (wider than /{CATCH_ALL_PREFIX[network.version]}): name the hosts, "
            "or set egress.allow_any = true to let the device reach that much of the Internet"
        )
