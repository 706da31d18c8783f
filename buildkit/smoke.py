"""`buildkit smoke`: the Flash-Boot-Test loop, emulated on a laptop.

What `buildkit package` wrote is exercised the way the Pi would run it: the apkovl is unpacked into
a scratch root, the payload image is mounted read-only where the overlay expects it, the overlay's
own nftables ruleset is loaded in a "device" network namespace, and the overlay's own boot script
runs its gates and starts the payload in bubblewrap with tini as PID 1. The ARM payload runs under
`qemu-arm` as an ARM1176 through binfmt_misc. A second namespace, joined by a veth pair, plays the
Internet: it talks HTTP to port 80 as a client of the device would.

Every check yields one CheckResult. A check that a later one depends on (the firewall, the boot)
ends the run when it fails; the checks that could not run are reported as failed, never skipped
silently. Whatever happens, namespaces, processes and mounts are removed before `smoke` returns.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TypeVar

from buildkit.errors import UserError, VerificationFailed
from buildkit.fsutil import write_bytes_atomic
from buildkit.recipe import NAME_RE, RECIPE_FILE, load_recipe
from buildkit.toolchain import require_tool

DEFAULT_TIMEOUT = 60.0
STOP_BOUND = 10.0
QEMU_CPU = "arm1176"
DEVICE_ADDR = "10.231.0.1"
CLIENT_ADDR = "10.231.0.2"
PREFIX_LEN = 30
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
NETNS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
T = TypeVar("T")

CHECKS = (
    "overlay-unpacked",
    "manifest-signature",
    "payload-image",
    "firewall",
    "boot-gates",
    "sandbox",
    "cpu-arm1176",
    "http-port-80",
    "direct-port-closed",
    "debug-logs",
    "no-zombies",
    "sigterm-stop",
    "tampered-payload-refused",
)


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    seconds: float


@dataclass(frozen=True)
class SmokeResult:
    target: str
    checks: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(check.ok for check in self.checks)

    @property
    def failed(self) -> tuple[CheckResult, ...]:
        return tuple(check for check in self.checks if not check.ok)


class CheckFailed(Exception):
    """A check does not hold; the message is its detail line."""


class _RunStopped(Exception):
    """A check the rest depends on failed; the remaining checks cannot run."""


class _CheckLog:
    def __init__(self) -> None:
        self.results: list[CheckResult] = []

    def run(self, name: str, check: Callable[[], str], required: bool = False) -> None:
        self.run_value(name, lambda: (check(), None), required)

    def run_value(self, name: str, check: Callable[[], tuple[str, T]], required: bool = False) -> T | None:
        """Run a check that also hands on a value; a failed required check stops the run."""
        assert name in CHECKS, name
        started = time.monotonic()
        value = None
        try:
            detail, value = check()
            ok = True
        except CheckFailed as exc:
            detail, ok = str(exc), False
        except OSError as exc:  # e.g. a process of the payload vanished while it was inspected
            detail, ok = f"{type(exc).__name__}: {exc}", False
        self.results.append(CheckResult(name, ok, detail, round(time.monotonic() - started, 3)))
        if required and not ok:
            raise _RunStopped(name)
        return value

    def finish(self, stopped_by: str | None) -> tuple[CheckResult, ...]:
        done = {result.name for result in self.results}
        reason = f"not run: {stopped_by} failed" if stopped_by else "not run"
        missing = [CheckResult(name, False, reason, 0.0) for name in CHECKS if name not in done]
        return tuple(self.results + missing)


# ---------------------------------------------------------------------------------------------
# Host requirements


def require_host() -> None:
    """Root, and the tools the emulated boot needs; a UserError (exit 2) names the fix."""
    if os.geteuid() != 0:
        raise UserError("buildkit smoke needs root (network namespaces, nftables, mounts, binfmt_misc): "
                        "run it with sudo, or as root in a VM or a --privileged container")
    for tool in ("ip", "nsenter", "nft", "bwrap", "tini-static", "setpriv", "minisign", "busybox", "mount",
                 "umount", "update-binfmts"):
        require_tool(tool)


def ensure_qemu_binfmt() -> str:
    """qemu-arm registered in binfmt_misc with the fix-binary flag, so that an ARM executable runs
    inside the sandbox without qemu in its root; mounts binfmt_misc and enables the entry if needed."""
    if not (BINFMT_DIR / "register").exists():
        _host_step(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)],
                   "cannot mount binfmt_misc, so ARM binaries cannot run here: run smoke on a host or VM "
                   "that allows it (a container needs --privileged)")
    entry = BINFMT_DIR / "qemu-arm"
    if not _binfmt_enabled(entry):
        _host_step(["update-binfmts", "--enable", "qemu-arm"],
                   "cannot register qemu-arm in binfmt_misc: install qemu-user-static and binfmt-support "
                   "(apt-get install qemu-user-static binfmt-support)")
    if not _binfmt_enabled(entry):
        raise UserError(f"{entry} is still not enabled after update-binfmts: check `update-binfmts --display qemu-arm`")
    fields = dict(line.split(" ", 1) for line in entry.read_text().splitlines() if " " in line)
    if "F" not in fields.get("flags:", ""):
        raise UserError(f"{entry} lacks the F (fix-binary) flag, so qemu is not found inside the sandbox: "
                        "use Debian's qemu-user-static entry (update-binfmts --enable qemu-arm)")
    return f"qemu-arm via binfmt_misc ({fields.get('interpreter', '?')}, flags {fields.get('flags:', '?')})"


def _binfmt_enabled(entry: Path) -> bool:
    return entry.exists() and entry.read_text().startswith("enabled")


def _host_step(argv: list[str], fix: str) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"{' '.join(argv)}: {_last_line(proc.stderr) or f'exit {proc.returncode}'}: {fix}")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


# ---------------------------------------------------------------------------------------------
# The overlay and the payload image


def unpack_overlay(apkovl: Path, root: Path) -> str:
    """Extract the apkovl the way the initramfs would, refusing members that escape `root` or
    create device nodes (Python's "tar" filter plus a device check)."""
    try:
        with tarfile.open(apkovl, "r:gz") as tar:
            members = tar.getmembers()
            tar.extractall(root, filter=_overlay_member)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise CheckFailed(f"{apkovl.name}: cannot unpack: {exc}") from None
    return f"{len(members)} entries from {apkovl.name}"


def _overlay_member(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    if member.ischr() or member.isblk() or member.isfifo():
        raise tarfile.SpecialFileError(member)
    return tarfile.tar_filter(member, dest)


def loop_mount(image: Path, mountpoint: Path) -> tuple[bool, str]:
    """(True, loop device) when the image mounts read-only through a loop device (autoclear: the
    unmount frees the device); (False, why) when this kernel or container refuses loop mounts."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "squashfs", "-o", "ro,loop,nodev,nosuid", str(image), str(mountpoint)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        return False, _last_line(mounted.stderr) or f"mount exit {mounted.returncode}"
    source = subprocess.run(["findmnt", "-no", "SOURCE", str(mountpoint)], capture_output=True, text=True)
    return True, source.stdout.strip() or "a loop device"


def unpack_image(image: Path, tree: Path) -> None:
    unsquashfs = require_tool("unsquashfs")
    unpacked = subprocess.run([str(unsquashfs), "-no-xattrs", "-quiet", "-d", str(tree), str(image)],
                              capture_output=True, text=True)
    if unpacked.returncode != 0:
        raise CheckFailed(f"{image.name}: not a readable squashfs image: {_last_line(unpacked.stderr)}")


def bind_read_only(tree: Path, mountpoint: Path, stack: contextlib.ExitStack) -> None:
    mountpoint.mkdir(parents=True, exist_ok=True)
    for argv in (["mount", "--bind", str(tree), str(mountpoint)], ["mount", "-o", "remount,bind,ro", str(mountpoint)]):
        bound = subprocess.run(argv, capture_output=True, text=True)
        if bound.returncode != 0:
            raise CheckFailed(f"{' '.join(argv)}: {_last_line(bound.stderr)}")
        if argv[1] == "--bind":
            stack.callback(_unmount, mountpoint)


def _unmount(mountpoint: Path) -> None:
    if subprocess.run(["umount", str(mountpoint)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True)


def flipped_copy(image: Path, dest: Path) -> Path:
    """A copy of `image` with one byte in its middle inverted: a tampered payload."""
    shutil.copyfile(image, dest)
    with open(dest, "r+b") as fh:
        fh.seek(dest.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0xFF]))
    return dest


# ---------------------------------------------------------------------------------------------
# Network namespaces


@dataclass(frozen=True)
class Netns:
    device: str
    client: str


@contextlib.contextmanager
def network_namespaces(tag: str) -> Iterator[Netns]:
    """Two namespaces joined by a veth pair: the device at DEVICE_ADDR, a client at CLIENT_ADDR.
    The veth ends are created inside the namespaces, so nothing touches the host's interfaces."""
    net = Netns(f"bk-{tag}-dev", f"bk-{tag}-net")
    created: list[str] = []
    try:
        for name in (net.device, net.client):
            _ip("netns", "add", name)
            created.append(name)
        _ip("link", "add", f"bkd{tag}", "netns", net.device, "type", "veth",
            "peer", "name", f"bkn{tag}", "netns", net.client)
        for name, ifname, addr in ((net.device, f"bkd{tag}", DEVICE_ADDR), (net.client, f"bkn{tag}", CLIENT_ADDR)):
            _ip("-n", name, "addr", "add", f"{addr}/{PREFIX_LEN}", "dev", ifname)
            _ip("-n", name, "link", "set", ifname, "up")
            _ip("-n", name, "link", "set", "lo", "up")
        yield net
    finally:
        for name in reversed(created):
            kill_netns_processes(name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(f"ip {' '.join(args)}: {_last_line(proc.stderr)}: this host does not allow network "
                        "namespaces and veth pairs (run smoke as root on a VM or a --privileged container)")


def netns_pids(name: str) -> list[int]:
    proc = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    return [int(pid) for pid in proc.stdout.split()]


def kill_netns_processes(name: str, bound: float = 5.0) -> None:
    """SIGKILL everything left in the namespace and wait (bounded) until it is gone."""
    deadline = time.monotonic() + bound
    while (pids := netns_pids(name)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def apply_ruleset(ruleset: Path, netns: str) -> str:
    proc = subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", str(ruleset)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise CheckFailed(f"nft -f {ruleset.name} refused the overlay's ruleset: {_last_line(proc.stderr)}")
    listed = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "tables"], capture_output=True, text=True)
    tables = ", ".join(line.removeprefix("table ") for line in listed.stdout.splitlines())
    return f"{ruleset.name} loaded in {netns} (tables: {tables or 'none'})"


class NetnsClient:
    """HTTP and TCP probes made from inside a network namespace. A network namespace belongs to a
    thread, so one worker thread enters it (setns) and every request runs there."""

    def __init__(self, netns: str) -> None:
        self._netns = netns
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"netns-{netns}",
                                        initializer=self._enter)
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _enter(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(NETNS_DIR / self._netns, os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                raise OSError(code, f"setns into {self._netns}: {os.strerror(code)}")
        finally:
            os.close(fd)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def get(self, url: str, headers: dict[str, str] | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
        """(status, body) for any HTTP answer; OSError when nothing answers."""
        return self._pool.submit(self._get, url, headers or {}, timeout).result()

    def _get(self, url: str, headers: dict[str, str], timeout: float) -> tuple[int, bytes]:
        request = urllib.request.Request(url, headers=headers)
        try:
            with self._opener.open(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except urllib.error.URLError as exc:
            raise exc.reason if isinstance(exc.reason, OSError) else OSError(str(exc.reason)) from None

    def connect(self, host: str, port: int, timeout: float) -> str:
        """"open", "refused" or "dropped" (no answer within `timeout`)."""
        return self._pool.submit(self._connect, host, port, timeout).result()

    @staticmethod
    def _connect(host: str, port: int, timeout: float) -> str:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                return "open"
        except ConnectionRefusedError:
            return "refused"
        except (TimeoutError, socket.timeout):
            return "dropped"
        except OSError as exc:
            if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
                return "refused"
            raise


# ---------------------------------------------------------------------------------------------
# Processes seen from the host


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    state: str
    comm: str


def process_table() -> dict[int, Proc]:
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        table[int(entry.name)] = Proc(int(entry.name), int(fields[1]), fields[0], comm)
    return table


def descendants(root_pid: int, table: dict[int, Proc] | None = None) -> list[Proc]:
    table = process_table() if table is None else table
    children: dict[int, list[Proc]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc)
    found, todo = [], [root_pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child.pid)
    return found


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def proc_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw if b"=" in item)


def root_mount_options(pid: int) -> set[str]:
    """The mount options of "/" as process `pid` sees it (fields 4 and 5 of mountinfo)."""
    options: set[str] = set()
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            options = set(fields[5].split(","))
    return options


# ---------------------------------------------------------------------------------------------
# Reports


def render_text(result: SmokeResult) -> str:
    width = max(len(check.name) for check in result.checks)
    lines = [f"{'PASS' if check.ok else 'FAIL'}  {check.name:<{width}}  {check.seconds:6.2f}s  {check.detail}"
             for check in result.checks]
    passed = len(result.checks) - len(result.failed)
    lines.append(f"smoke {result.target}: {passed}/{len(result.checks)} checks passed"
                 + ("" if result.ok else f"; failed: {', '.join(check.name for check in result.failed)}"))
    return "\n".join(lines) + "\n"


def render_junit(result: SmokeResult) -> str:
    suite = ET.Element("testsuite", name=f"buildkit smoke {result.target}", tests=str(len(result.checks)),
                       failures=str(len(result.failed)), errors="0",
                       time=f"{sum(check.seconds for check in result.checks):.3f}")
    for check in result.checks:
        case = ET.SubElement(suite, "testcase", classname="buildkit.smoke", name=check.name,
                             time=f"{check.seconds:.3f}")
        if check.ok:
            ET.SubElement(case, "system-out").text = check.detail
        else:
            ET.SubElement(case, "failure", message=check.detail).text = check.detail
    ET.indent(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


def render_smoke(result: SmokeResult, fmt: str) -> str:
    renderers = {"text": render_text, "junit": render_junit}
    if fmt not in renderers:
        raise UserError(f"--format {fmt}: expected one of {', '.join(renderers)}")
    return renderers[fmt](result)


# ---------------------------------------------------------------------------------------------
# What a client of the device sees (the reference service contract, issue 3)


def check_http_port_80(client: NetnsClient) -> str:
    status, body = client.get(f"http://{DEVICE_ADDR}:80/api/health")
    if status != 200:
        raise CheckFailed(f"GET :80/api/health answered {status}: {_snippet(body)}")
    return f"GET http://{DEVICE_ADDR}:80/api/health → 200 {_snippet(body)} (through the 80→service port redirect)"


def check_direct_port_closed(client: NetnsClient, port: int) -> str:
    outcome = client.connect(DEVICE_ADDR, port, timeout=2.0)
    if outcome == "open":
        raise CheckFailed(f"{DEVICE_ADDR}:{port} accepted a direct connection: the firewall must only let :80 in")
    return f"{DEVICE_ADDR}:{port} directly: {outcome}"


def check_debug_logs(client: NetnsClient, token: str) -> str:
    """/debug/logs answers 401 without or with a wrong token, and with the right one returns
    records in which secrets sent earlier in a request do not appear."""
    canaries = {name: f"smoke-{name}-{secrets.token_hex(8)}" for name in ("token", "password", "bearer", "cookie")}
    status, _ = client.get(f"http://{DEVICE_ADDR}/api/data?token={canaries['token']}&password={canaries['password']}",
                           headers={"Authorization": f"Bearer {canaries['bearer']}",
                                    "Cookie": f"session={canaries['cookie']}"})
    if status != 200:
        raise CheckFailed(f"GET /api/data with secrets in the request answered {status}")
    logs = f"http://{DEVICE_ADDR}/debug/logs"
    for label, headers in (("no token", {}), ("a wrong token", {"Authorization": f"Bearer wrong-{token}"})):
        status, body = client.get(logs, headers=headers)
        if status != 401:
            raise CheckFailed(f"/debug/logs with {label} answered {status}, expected 401: {_snippet(body)}")
    status, body = client.get(logs, headers={"Authorization": f"Bearer {token}"})
    if status != 200:
        raise CheckFailed(f"/debug/logs with the right token answered {status}: {_snippet(body)}")
    text = body.decode(errors="replace")
    records = _json_records(text)
    if not any("/api/data" in json.dumps(record) for record in records):
        raise CheckFailed(f"/debug/logs has {len(records)} record(s), none for the /api/data request just made")
    leaked = sorted(name for name, value in canaries.items() if value in text)
    if token in text:
        leaked.append("the debug token itself")
    if leaked:
        raise CheckFailed(f"/debug/logs shows unredacted secrets: {', '.join(leaked)}")
    return (f"401 without and with a wrong token; the right token gives {len(records)} record(s), "
            "the /api/data request's token, password, Authorization and Cookie redacted")


def _json_records(text: str) -> list[dict]:
    """Records as JSON lines or as one JSON array."""
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            return [item for item in json.loads(stripped) if isinstance(item, dict)]
        except json.JSONDecodeError:
            return []
    records = []
    for line in stripped.splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            if isinstance(item := json.loads(line), dict):
                records.append(item)
    return records


def _snippet(body: bytes, limit: int = 120) -> str:
    text = " ".join(body.decode(errors="replace").split())
    return text if len(text) <= limit else text[:limit] + "…"


def emit_smoke(result: SmokeResult, fmt: str, output: Path | None) -> None:
    """The report on stdout, or in `output` (atomically) with the text lines still on stdout."""
    if output is not None:
        write_bytes_atomic(output, render_smoke(result, fmt).encode())
    print(render_smoke(result, "text" if output is not None else fmt), end="")


# ---------------------------------------------------------------------------------------------
# What to smoke-test: an output directory of `buildkit package`, or a recipe packaged on the fly


DEV_KEY_DIR = Path(".buildkit/dev-key")
MANIFEST = "manifest.json"


@contextlib.contextmanager
def packaged_target(target: Path) -> Iterator[Path]:
    """`target` itself when `buildkit package` wrote it; a recipe is packaged with the signing key
    in $BUILDKIT_KEY or the development key into a temporary directory, removed afterwards."""
    require_host()
    if (target / MANIFEST).is_file():
        yield target
        return
    if target.is_dir() and not (target / RECIPE_FILE).is_file():
        raise UserError(f"{target}: neither an output directory of `buildkit package` (no {MANIFEST}) "
                        f"nor a recipe (no {RECIPE_FILE}): pass one of them")
    from buildkit import sign
    from buildkit.package import package_recipe

    recipe = load_recipe(target)
    key = sign.resolve_signing_key(None, None, dev_key_dir=DEV_KEY_DIR)
    with tempfile.TemporaryDirectory(prefix=f"buildkit-smoke-{recipe.name}-") as tmp:
        package_recipe(recipe, Path(tmp), key)
        yield Path(tmp)


# ---------------------------------------------------------------------------------------------
# The emulated device: the overlay's own boot script, run with its locations moved into scratch


PAYLOAD_SCRIPT = "usr/libexec/buildkit/payload"
PUBLIC_KEY = "etc/buildkit/buildkit.pub"
RULESET = "etc/nftables.nft"
HOST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class PackageFiles:
    """What `buildkit package` wrote: the SD card's files."""

    out_dir: Path
    apkovl: Path
    manifest: Path
    signature: Path
    name: str

    @classmethod
    def find(cls, out_dir: Path) -> PackageFiles:
        manifest = out_dir / MANIFEST
        apkovls = sorted(out_dir.glob("*.apkovl.tar.gz"))
        if len(apkovls) != 1:
            raise UserError(f"{out_dir}: expected one <hostname>.apkovl.tar.gz, found {len(apkovls)}: "
                            "pass a directory written by `buildkit package`")
        try:
            name = json.loads(manifest.read_text())["name"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{manifest}: not a buildkit manifest ({exc}): run `buildkit package` again") from None
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise UserError(f"{manifest}: name {name!r} is not a payload name: run `buildkit package` again")
        return cls(out_dir, apkovls[0], manifest, out_dir / f"{MANIFEST}.minisig", name)


@dataclass(frozen=True)
class PayloadConfig:
    """The overlay's etc/buildkit/<name>.conf, read by the shell that sources it on the device."""

    name: str
    image: str
    uid: int
    gid: int
    secrets: tuple[tuple[str, str], ...]   # (name, file on the device)
    argv: str
    port: int

    @classmethod
    def read(cls, root: Path, name: str) -> PayloadConfig:
        conf = root / "etc/buildkit" / f"{name}.conf"
        shell = subprocess.run(["busybox", "sh", "-c", 'set -a && . "$1" && exec env -0', "sh", str(conf)],
                               capture_output=True, text=True, env={"PATH": HOST_PATH})
        conf_of = dict(item.partition("=")[::2] for item in shell.stdout.split("\0") if "=" in item)
        try:
            if shell.returncode != 0:
                raise ValueError(f"cannot be sourced: {_last_line(shell.stderr) or 'missing'}")
            config = cls(conf_of["BK_NAME"], conf_of["BK_IMAGE"], int(conf_of["BK_UID"]), int(conf_of["BK_GID"]),
                         tuple(tuple(item.split(":", 1)) for item in conf_of["BK_SECRETS"].split()),
                         conf_of["BK_ARGV"], _service_port(root / RULESET))
            config.check_paths()
            return config
        except KeyError as exc:
            raise CheckFailed(f"/etc/buildkit/{name}.conf does not set {exc.args[0]}") from None
        except (ValueError, OSError) as exc:
            raise CheckFailed(f"/etc/buildkit/{name}.conf: {exc}") from None

    def check_paths(self) -> None:
        """smoke runs as root and builds paths from these: they must stay where they belong."""
        if "/" in self.image or self.image in ("", ".", ".."):
            raise ValueError(f"BK_IMAGE {self.image!r} is not a file name on the boot media")
        for name, device_path in self.secrets:
            pure = PurePosixPath(device_path)
            if not pure.is_absolute() or ".." in pure.parts or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
                raise ValueError(f"BK_SECRETS entry {name}:{device_path} is not NAME:/absolute/path")

    def token_secret(self) -> str:
        """The secret the service reads its /debug/logs token from: the one its arguments name."""
        named = [name for name, _ in self.secrets if f"/run/secrets/{name}" in self.argv]
        tokens = [name for name in named if "token" in name] or named
        if not tokens:
            raise CheckFailed("the payload's arguments name no /run/secrets/<name> file for the debug token")
        return tokens[0]


def _service_port(ruleset: Path) -> int:
    for line in ruleset.read_text().splitlines():
        words = line.split()
        if words[:3] == ["define", "SERVICE_PORT", "="] and len(words) == 4 and words[3].isdigit():
            return int(words[3])
    raise ValueError(f"/{RULESET} defines no SERVICE_PORT (the port 80 is redirected to)")


@dataclass(frozen=True)
class ScriptRun:
    returncode: int
    output: str     # stdout and stderr: the script logs every gate's verdict to stderr


class Device:
    """Runs the overlay's boot script (`payload start|stop NAME`) in the device namespace, the way
    /etc/init.d/<name> does under OpenRC, with its locations moved into the scratch directory."""

    def __init__(self, root: Path, media: Path, netns: str, config: PayloadConfig, scratch: Path) -> None:
        self.root = root
        self.media = media
        self.netns = netns
        self.config = config
        self.log_file = scratch / "payload.log"
        self.run_dir = root / "run/buildkit" / config.name
        self.mount_dir = root / "srv" / config.name
        self.tini = require_tool("tini-static")
        self.overrides: dict[str, str] = {}

    def script(self, action: str, media: Path | None = None, timeout: float = 60.0) -> ScriptRun:
        env = {
            "PATH": HOST_PATH,
            "BK_ROOT": str(self.root),
            "BK_MEDIA": str(media or self.media),
            "BK_TINI": str(self.tini),
            # No NTP server is reachable from the emulated network: the gate's build-date floor still holds.
            "BK_NTPD": "false",
            "BK_LOGGER": "true",
            "BK_LOG_FILE": str(self.log_file),
            "BK_STOP_TIMEOUT": str(int(STOP_BOUND)),
            "QEMU_CPU": QEMU_CPU,
            **self.overrides,
        }
        argv = ["nsenter", f"--net={NETNS_DIR / self.netns}", "--", "busybox", "sh",
                str(self.root / PAYLOAD_SCRIPT), action, self.config.name]
        # Output goes to a file, not a pipe: the sandbox started in the background may inherit the
        # script's descriptors, and a pipe would then stay open for as long as the payload runs.
        with tempfile.TemporaryFile(mode="w+") as output:
            try:
                proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=output,
                                      stderr=subprocess.STDOUT, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise CheckFailed(f"payload {action} {self.config.name} did not return within {timeout:.0f}s") from None
            output.seek(0)
            return ScriptRun(proc.returncode, output.read())

    def sandbox_pid(self) -> int | None:
        """The sandbox's PID 1 (tini) as the host sees it, while it runs."""
        try:
            pid = int((self.run_dir / "pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if Path(f"/proc/{pid}").exists() else None

    def payload_output(self, lines: int = 3) -> str:
        try:
            tail = self.log_file.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "(no output)"
        return " | ".join(tail) or "(no output)"

    def force_stop(self) -> None:
        """Whatever is still running in the device namespace is killed, whatever is mounted below
        the scratch root is unmounted (the loop devices are autoclear: unmounting frees them)."""
        kill_netns_processes(self.netns)
        for mountpoint in reversed(mounts_below(self.root)):
            _unmount(mountpoint)


def mounts_below(root: Path) -> list[Path]:
    prefix = str(root).rstrip("/") + "/"
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mountpoint = line.split()[4].encode().decode("unicode_escape")
        if mountpoint.startswith(prefix):
            found.append(Path(mountpoint))
    return found


# ---------------------------------------------------------------------------------------------
# Checks on the running device


def check_manifest_signature(package: PackageFiles, root: Path) -> str:
    """The manifest verifies with the key the overlay ships (the key the device trusts)."""
    from buildkit import sign

    trusted = root / PUBLIC_KEY
    if not trusted.is_file():
        raise CheckFailed(f"the overlay has no /{PUBLIC_KEY}: the device could not verify anything")
    try:
        key = sign.load_public_key(trusted)
        comment = sign.verify_bytes(package.manifest.read_bytes(), package.signature.read_text(), key)
    except (VerificationFailed, UserError, OSError) as exc:
        raise CheckFailed(f"{package.manifest.name}: {exc}") from None
    try:
        same = sign.load_public_key(package.out_dir / "buildkit.pub").keynum == key.keynum
    except (UserError, OSError):
        same = False
    return (f"{package.signature.name} verifies with the overlay's /{PUBLIC_KEY} (key {key.key_id}"
            f"{'' if same else ', which differs from the buildkit.pub beside it'}); trusted comment: {comment}")


def check_payload_image(device: Device, image: Path, scratch: Path, stack: contextlib.ExitStack) -> str:
    """The image mounts read-only through a loop device and holds the entrypoint; the overlay's
    script then mounts it itself. Where loop mounts are refused (some containers), the image is
    unpacked and bound read-only where the script would mount it, and the script's own mount step
    is told to leave it (BK_MOUNT/BK_UMOUNT=true)."""
    argv = device.config.argv.split()
    entrypoint = argv[0].strip("'\"").lstrip("/") if argv else ""
    probe = scratch / "image-probe"
    looped, how = loop_mount(image, probe)
    if looped:
        try:
            holds_entrypoint = bool(entrypoint) and (probe / entrypoint).is_file()
        finally:
            _unmount(probe)
        where = f"loop-mounts read-only ({how}); the overlay's script mounts it at /srv/{device.config.name}"
    else:
        probe = scratch / "image-tree"
        unpack_image(image, probe)
        holds_entrypoint = bool(entrypoint) and (probe / entrypoint).is_file()
        bind_read_only(probe, device.mount_dir, stack)
        device.overrides.update(BK_MOUNT="true", BK_UMOUNT="true")
        where = (f"loop mounts are refused here ({how}), so it was unpacked with unsquashfs and bound "
                 f"read-only at /srv/{device.config.name} in place of the script's mount")
    if not holds_entrypoint:
        raise CheckFailed(f"{image.name} has no entrypoint /{entrypoint} (BK_ARGV: {device.config.argv!r})")
    return f"{image.name} holds /{entrypoint}; {where}"


def provision_secrets(device: Device) -> dict[str, str]:
    """A fresh random value for every declared secret, at its device path inside the scratch root,
    readable only by the service user: test values, never written into the output directory."""
    values = {}
    for name, device_path in device.config.secrets:
        path = device.root / device_path.lstrip("/")
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        values[name] = secrets.token_urlsafe(24)
        path.write_text(values[name] + "\n")
        os.chown(path, device.config.uid, device.config.gid)
        os.chmod(path, 0o400)
    return values


def check_boot(device: Device, timeout: float) -> tuple[str, dict[str, str]]:
    """The secrets provisioned, then `payload start`: the gates in order and the sandbox."""
    secret_values = provision_secrets(device)
    started = device.script("start", timeout=timeout + 30)
    said = [line.split(": ", 1)[-1] for line in started.output.splitlines() if line.strip()]
    if started.returncode != 0 or device.sandbox_pid() is None:
        refused = [line for line in started.output.splitlines() if "REFUSED" in line]
        raise CheckFailed(f"payload start exited {started.returncode}: "
                          f"{(refused or said or ['no output'])[-1]}; payload output: {device.payload_output()}")
    return ("; ".join(said) + " (smoke: no NTP server is reachable here, so the clock gate's build-date floor "
            "is what ran)"), secret_values


def sandbox_processes(device: Device) -> tuple[Proc, Proc]:
    """(tini, the payload) as the host sees them."""
    tini_pid = device.sandbox_pid()
    if tini_pid is None:
        raise CheckFailed("the sandbox is not running")
    table = process_table()
    children = [proc for proc in table.values() if proc.ppid == tini_pid]
    if not children:
        raise CheckFailed(f"tini (pid {tini_pid}) has no child: the payload exited ({device.payload_output()})")
    return table[tini_pid], min(children, key=lambda proc: proc.pid)


def check_sandbox(device: Device) -> str:
    tini, payload = sandbox_processes(device)
    problems = []
    tini_status, status = proc_status(tini.pid), proc_status(payload.pid)
    if tini_status.get("NSpid", "").split()[-1:] != ["1"]:
        problems.append(f"{tini.comm} is not PID 1 of its pid namespace (NSpid {tini_status.get('NSpid')})")
    host_uid = int(status["Uid"].split()[1])
    inside_uid = _inside_id(payload.pid, "uid_map", host_uid)
    if inside_uid != device.config.uid or inside_uid == 0:
        problems.append(f"runs as uid {inside_uid} inside, expected the recipe's {device.config.uid}")
    if host_uid == 0:
        problems.append("runs as root on the host")
    if int(status.get("CapEff", "1"), 16) != 0:
        problems.append(f"has capabilities (CapEff {status.get('CapEff')})")
    if status.get("NoNewPrivs") != "1":
        problems.append("may gain privileges (NoNewPrivs 0)")
    if "ro" not in root_mount_options(payload.pid):
        problems.append("its / is writable")
    if problems:
        raise CheckFailed(f"payload {payload.comm} (pid {payload.pid}): " + "; ".join(problems))
    return (f"{payload.comm} under {tini.comm} (PID 1 in its namespace): uid {inside_uid} inside, "
            f"{host_uid} on the host, no capabilities, no_new_privs, read-only /")


def _inside_id(pid: int, map_name: str, host_id: int) -> int:
    for line in Path(f"/proc/{pid}/{map_name}").read_text().splitlines():
        inside, outside, count = map(int, line.split())
        if outside <= host_id < outside + count:
            return inside + host_id - outside
    return -1


def check_cpu_arm1176(device: Device) -> str:
    _, payload = sandbox_processes(device)
    interpreter = next((line.split(" ", 1)[1] for line in (BINFMT_DIR / "qemu-arm").read_text().splitlines()
                        if line.startswith("interpreter ")), "")
    exe = os.readlink(f"/proc/{payload.pid}/exe")
    if not interpreter or os.path.realpath(interpreter) != os.path.realpath(exe):
        raise CheckFailed(f"payload {payload.comm} runs as {exe}, not through binfmt's {interpreter or 'qemu-arm'}")
    cpu = proc_environ(payload.pid).get("QEMU_CPU")
    if cpu != QEMU_CPU:
        raise CheckFailed(f"payload {payload.comm} is emulated with QEMU_CPU={cpu or '(unset: qemu default, ARMv7+)'}, "
                          f"not {QEMU_CPU}: pass QEMU_CPU into the sandbox")
    return f"payload {payload.comm} runs under {exe} with QEMU_CPU={cpu} (an ARM1176, like the Pi 1)"


def check_no_zombies(device: Device, client: NetnsClient, timeout: float, bound: float = 10.0) -> str:
    """The spawn endpoint starts children that leave orphans behind; once they exit, nothing of
    them may remain under the sandbox's PID 1, zombies least of all."""
    tini, _ = sandbox_processes(device)
    before = {proc.pid for proc in descendants(tini.pid)}
    # Each child is a fresh emulated process: an interpreter takes seconds to start under qemu.
    status, body = client.get(f"http://{DEVICE_ADDR}/api/spawn?n=2", timeout=timeout)
    if status != 200:
        raise CheckFailed(f"GET /api/spawn answered {status}: {_snippet(body)}")
    try:
        spawned = json.loads(body)
    except json.JSONDecodeError:
        spawned = {}
    started = time.monotonic()
    while True:
        leftovers = [proc for proc in descendants(tini.pid) if proc.pid not in before]
        zombies = [proc for proc in leftovers if proc.state == "Z"]
        if not leftovers:
            return (f"/api/spawn started {len(spawned.get('children', []))} children and "
                    f"{len(spawned.get('orphans', []))} orphans; all gone and reaped "
                    f"{time.monotonic() - started:.1f}s later, 0 zombies")
        if time.monotonic() - started > bound:
            raise CheckFailed(f"{len(zombies)} zombie(s) and {len(leftovers) - len(zombies)} other process(es) "
                              f"from /api/spawn still there after {bound:.0f}s")
        time.sleep(0.1)


def check_sigterm_stop(device: Device) -> str:
    """`payload stop` (what OpenRC's stop runs) sends SIGTERM; the payload must exit by itself
    within STOP_BOUND, leaving no process and no mount behind."""
    tini, payload = sandbox_processes(device)
    table = process_table()
    bwrap = table.get(tini.ppid)
    sandbox = [proc for proc in (bwrap, tini, *descendants(tini.pid, table)) if proc is not None]
    started = time.monotonic()
    stopped = device.script("stop", timeout=STOP_BOUND + 20)
    elapsed = time.monotonic() - started
    survivors = [proc for proc in sandbox if Path(f"/proc/{proc.pid}").exists()]
    exit_file = device.run_dir / "exit"
    status = exit_file.read_text().strip() if exit_file.is_file() else "unknown"
    problems = []
    if stopped.returncode != 0:
        problems.append(f"payload stop exited {stopped.returncode}: {_last_line(stopped.output)}")
    if "SIGKILL" in stopped.output:
        problems.append(f"it ignored SIGTERM for {STOP_BOUND:.0f}s and was killed")
    if survivors:
        problems.append(f"{len(survivors)} sandbox process(es) still running")
    if status not in ("0", str(128 + signal.SIGTERM)):
        problems.append(f"exit status {status}")
    if device.overrides.get("BK_MOUNT") != "true" and mounts_below(device.mount_dir.parent):
        problems.append(f"/srv/{device.config.name} is still mounted")
    if problems:
        raise CheckFailed(f"SIGTERM to {payload.comm}: " + "; ".join(problems))
    return (f"SIGTERM through tini: {payload.comm} and the sandbox's {len(sandbox)} process(es) gone in "
            f"{elapsed:.1f}s (bound {STOP_BOUND:.0f}s), exit status {status}")


def check_tampered_payload(device: Device, package: PackageFiles, scratch: Path) -> str:
    """The SD card with one flipped byte in the payload image: the integrity gate must refuse to
    start, say why, and leave nothing running."""
    media = scratch / "tampered-media"
    media.mkdir()
    for source in (package.apkovl, package.manifest, package.signature):
        shutil.copyfile(source, media / source.name)
    flipped_copy(package.out_dir / device.config.image, media / device.config.image)
    try:
        started = device.script("start", media=media)
        running = device.sandbox_pid()
    finally:
        device.script("stop")
    refused = [line for line in started.output.splitlines() if "REFUSED" in line]
    if started.returncode == 0 or running is not None:
        raise CheckFailed(f"a payload image with a flipped byte was started (exit {started.returncode})")
    if not any("integrity" in line for line in refused):
        raise CheckFailed(f"start failed (exit {started.returncode}) but not at the integrity gate: "
                          f"{_last_line(started.output) or 'no reason given'}")
    return f"refused (exit {started.returncode}): {refused[-1].split('REFUSED: ', 1)[-1]}"


# ---------------------------------------------------------------------------------------------
# The stage


def smoke(target: Path, timeout: float = DEFAULT_TIMEOUT) -> SmokeResult:
    """Boot what `buildkit package` wrote in `target` on an emulated device and check it from the
    outside. Needs root; UserError when the host cannot run it (exit 2)."""
    require_host()
    package = PackageFiles.find(target)
    log = _CheckLog()
    stopped_by = None
    with _sigterm_as_interrupt(), contextlib.ExitStack() as stack:
        scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="buildkit-smoke-",
                                                                        ignore_cleanup_errors=True)))
        os.chmod(scratch, 0o755)  # the service user must reach the image mount and its secrets
        try:
            _run_checks(package, scratch, timeout, log, stack)
        except _RunStopped as exc:
            stopped_by = str(exc)
    return SmokeResult(str(target), log.finish(stopped_by))


def _run_checks(package: PackageFiles, scratch: Path, timeout: float, log: _CheckLog,
                stack: contextlib.ExitStack) -> None:
    root = scratch / "root"
    root.mkdir(mode=0o755)
    config = log.run_value("overlay-unpacked", lambda: unpack_overlay_config(package, root), required=True)
    log.run("manifest-signature", lambda: check_manifest_signature(package, root))
    binfmt = ensure_qemu_binfmt()
    netns = stack.enter_context(network_namespaces(f"{os.getpid()}{secrets.token_hex(2)}"))
    device = Device(root, package.out_dir, netns.device, config, scratch)
    stack.callback(device.force_stop)
    client = NetnsClient(netns.client)
    stack.callback(client.close)
    log.run("payload-image", lambda: check_payload_image(device, package.out_dir / config.image, scratch, stack),
            required=True)
    log.run("firewall", lambda: apply_ruleset(root / RULESET, netns.device), required=True)
    secret_values = log.run_value("boot-gates", lambda: check_boot(device, timeout), required=True)
    log.run("sandbox", lambda: check_sandbox(device))
    log.run("cpu-arm1176", lambda: f"{check_cpu_arm1176(device)}; {binfmt}")
    log.run("http-port-80", lambda: wait_for_service(client, device, timeout), required=True)
    log.run("direct-port-closed", lambda: check_direct_port_closed(client, config.port))
    log.run("debug-logs", lambda: check_debug_logs(client, secret_values[config.token_secret()]))
    log.run("no-zombies", lambda: check_no_zombies(device, client, timeout))
    log.run("sigterm-stop", lambda: check_sigterm_stop(device))
    log.run("tampered-payload-refused", lambda: check_tampered_payload(device, package, scratch))


def unpack_overlay_config(package: PackageFiles, root: Path) -> tuple[str, PayloadConfig]:
    unpacked = unpack_overlay(package.apkovl, root)
    if not (root / PAYLOAD_SCRIPT).is_file():
        raise CheckFailed(f"{unpacked}, but no /{PAYLOAD_SCRIPT}: nothing would start the payload")
    config = PayloadConfig.read(root, package.name)
    return (f"{unpacked}; payload {config.name}: image {config.image}, uid {config.uid}, "
            f"service port {config.port}"), config


def wait_for_service(client: NetnsClient, device: Device, timeout: float) -> str:
    """Polls /api/health on :80 until it answers (a few times a second: under the firewall's
    per-source limit of new connections) or `timeout` passes."""
    started = time.monotonic()
    while True:
        try:
            detail = check_http_port_80(client)
            return f"{detail}, {time.monotonic() - started:.1f}s after the sandbox started"
        except (OSError, CheckFailed) as exc:
            if time.monotonic() - started > timeout:
                raise CheckFailed(f"no answer on {DEVICE_ADDR}:80 within {timeout:.0f}s ({exc}); "
                                  f"payload output: {device.payload_output()}") from None
            if device.sandbox_pid() is None:
                raise CheckFailed(f"the sandbox exited before answering; payload output: {device.payload_output()}")
        time.sleep(0.25)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so that cleanup runs either way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
