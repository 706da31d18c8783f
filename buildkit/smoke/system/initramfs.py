"""The initramfs of `buildkit smoke --system`: two newc cpio archives, concatenated (the kernel
unpacks both into its rootfs). The first holds the Debian armel userland and the kernel's modules
under /userland and is cached, keyed by the .debs it is made of; the second holds /init, the agent,
this run's settings and stubs for the Alpine services no Debian package provides that another
service needs. Both are reproducible: sorted, owned by root, mtime 0. They are not compressed: the
emulated ARM1176 would spend longer inflating them than the kernel spends copying them.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
import shlex
import stat
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from buildkit.errors import UserError
from buildkit.fsutil import write_bytes_atomic
from buildkit.smoke.results import last_line
from buildkit.smoke.system.debian import Kernel, Userland
from buildkit.toolchain import require_tool

USERLAND = "userland"
# Never needed at run time: documentation, translations, glibc's iconv modules, util-linux beyond setpriv.
SKIPPED_PREFIXES = (
    "usr/share/doc/",
    "usr/share/man/",
    "usr/share/locale/",
    "usr/share/lintian/",
    "usr/share/info/",
    "usr/share/bug/",
    "usr/lib/arm-linux-gnueabi/gconv/",
    "usr/share/i18n/",
)
# Debian's sysvinit wrappers of OpenRC (Alpine's inittab, used here, runs openrc itself) and its
# agetty and cgroups services, which no runlevel here enables: OpenRC would read each of them when
# it builds its dependency tree on every boot (a fork and an exec or two each).
SKIPPED_FILES = ("etc/init.d/rc", "etc/init.d/rcS", "etc/init.d/agetty", "etc/init.d/cgroups")
ONLY_FROM = {"util-linux": ("usr/bin/setpriv",)}
LSB2RCCONF = "lib/rc/bin/lsb2rcconf"
# What the initramfs loads before it looks for the card (nlplug-findfs and hwdrivers load these
# from modaliases on Alpine): the card's file system, the loop device and squashfs the payload
# image needs, the USB network device, and crc32c, which busybox modprobe would not load for
# libcrc32c (a softdep) and without which nf_tables cannot load. And the board's RNG, which mdev
# loads by its modalias on Alpine, early enough to seed the kernel CRNG before the entropy gate.
STAGE1_MODULES = (
    "crc32c_generic",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "loop",
    "squashfs",
    "usbnet",
    "cdc_ether",
    "rndis_host",
    "bcm2835-rng",
)
# The modules of the overlay's ruleset (the firewall feature's /etc/nftables.nft), loaded with the
# others: when `nft -f` meets an expression whose module is missing, the kernel forks modprobe for
# it and then replays the whole ruleset transaction, once for each module, which took 6 to 8 s of
# emulated time. A ruleset that needs another module still gets it loaded on demand.
FIREWALL_MODULES = (
    "nf_tables",
    "nft_chain_nat",
    "nft_redir",
    "nft_ct",
    "nft_limit",
    "nft_connlimit",
    "nft_log",
    "nf_log_syslog",
)
# Loaded on demand by the kernel (nft asks for them through /sbin/modprobe), so they must be there:
# the nf_* and nft_* modules of these directories (their xt_*, ipt_*, ip_set and ip_vs modules are
# iptables' and ipvsadm's, which nft never asks for; leaving them out keeps 2 MB and 140 files out
# of what the kernel unpacks, stage 1 copies and switch_root frees on every boot).
MODULE_DIRS = ("kernel/net/netfilter", "kernel/net/ipv4/netfilter", "kernel/net/ipv6/netfilter")
ON_DEMAND_PREFIX = "nf"
GUEST_DIR = Path(__file__).parent / "guest"
PATH_DIRS = ("bin", "sbin", "usr/bin", "usr/sbin")
SERVICE_BRIDGES = ("networking", "nftables", "modules", "sysctl", "syslog", "hostname")
NEED_LINE = re.compile(r"^\s*need\s+([^#;\n]+)", re.MULTILINE)
STUB = '#!/sbin/openrc-run\ndescription="{name} (Alpine service, not emulated)"\nstart() {{ return 0; }}\n'
# Directories busybox init and OpenRC expect in the root (Alpine's baselayout has them).
ROOT_DIRS = (("run", 0o755), ("tmp", 0o1777), ("var", 0o755), ("var/log", 0o755), ("var/run", 0o755))


@dataclass(frozen=True)
class Entry:
    path: str  # no leading "/"
    mode: int  # with the file type bits
    data: bytes = b""  # a file's contents or a link's target


def cpio_newc(entries: list[Entry]) -> bytes:
    """A newc ("070701") archive of `entries`, in path order, root-owned, mtime 0."""
    out = bytearray()
    for ino, entry in enumerate(sorted(entries, key=lambda e: e.path), start=1):
        out += _member(entry.path, entry.mode, entry.data, ino)
    out += _member("TRAILER!!!", 0, b"", 0)
    return bytes(out)


def _member(name: str, mode: int, data: bytes, ino: int) -> bytes:
    encoded = name.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(mode) else 1
    fields = (ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(encoded), 0)
    header = b"070701" + b"".join(f"{value:08X}".encode() for value in fields)
    return _pad(header + encoded) + _pad(data)


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def read_cpio(data: bytes) -> list[Entry]:
    """The members of a newc archive written by `cpio_newc`."""
    entries: list[Entry] = []
    at = 0
    while True:
        fields = [int(data[at + 6 + 8 * i : at + 14 + 8 * i], 16) for i in range(13)]
        mode, size, name_size = fields[1], fields[6], fields[11]
        name_end = at + 110 + name_size
        name = data[at + 110 : name_end - 1].decode()
        body = name_end + (-name_end % 4)
        if name == "TRAILER!!!":
            return entries
        entries.append(Entry(name, mode, data[body : body + size]))
        at = body + size + (-(body + size) % 4)


def tree_entries(root: Path, prefix: str, only: tuple[str, ...] = ()) -> Iterator[Entry]:
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel in (".complete", *SKIPPED_FILES) or rel.startswith(SKIPPED_PREFIXES):
            continue
        if only and not any(rel == keep or keep.startswith(rel + "/") for keep in only):
            continue
        info = path.lstat()
        target = posixpath.join(prefix, rel)
        if stat.S_ISLNK(info.st_mode):
            yield Entry(target, stat.S_IFLNK | 0o777, str(path.readlink()).encode())
        elif stat.S_ISDIR(info.st_mode):
            yield Entry(target, stat.S_IFDIR | (info.st_mode & 0o7777))
        elif stat.S_ISREG(info.st_mode):
            yield Entry(target, stat.S_IFREG | (info.st_mode & 0o7777), path.read_bytes())


def userland_entries(userland: Userland) -> list[Entry]:
    by_path: dict[str, Entry] = {}
    for tree in userland.packages:
        package = tree.name.partition("_")[0]
        for entry in tree_entries(tree, USERLAND, ONLY_FROM.get(package, ())):
            by_path.setdefault(entry.path, entry)
    by_path.update({entry.path: entry for entry in module_entries(userland.kernel)})
    by_path.update({f"{USERLAND}/{d}": Entry(f"{USERLAND}/{d}", stat.S_IFDIR | mode) for d, mode in ROOT_DIRS})
    for entry in applet_links(userland, by_path):
        by_path.setdefault(entry.path, entry)
    # Debian's busybox awk uses glibc's regcomp, which refuses the unescaped "{" of the boot
    # script's awk (musl's, on Alpine, takes it): awk is Debian's mawk here.
    by_path[f"{USERLAND}/usr/bin/awk"] = Entry(f"{USERLAND}/usr/bin/awk", stat.S_IFLNK | 0o777, b"mawk")
    # Debian's OpenRC asks lsb2rcconf (a Debian addition, a glibc program) for the LSB header of
    # each script its dependency tree reads and each one openrc-run runs, where Alpine's sources
    # the script; none here has one. A program that prints nothing and exits 0 says so, without a
    # dynamic loader's start on the emulated CPU every time.
    by_path[f"{USERLAND}/{LSB2RCCONF}"] = Entry(f"{USERLAND}/{LSB2RCCONF}", stat.S_IFREG | 0o755, exit_zero_program())
    # Alpine's tini-static is /sbin/tini-static (the boot script's default), Debian's /usr/bin/tini-static.
    by_path[f"{USERLAND}/sbin/tini-static"] = Entry(
        f"{USERLAND}/sbin/tini-static", stat.S_IFLNK | 0o777, b"../usr/bin/tini-static"
    )
    return list(by_path.values())


def applet_links(userland: Userland, present: dict[str, Entry]) -> list[Entry]:
    """A link to busybox for each of its applets that no Debian program stands for (busybox lists
    them itself, run under qemu-arm: the list is the armel build's)."""
    trees = {tree.name.partition("_")[0]: tree for tree in userland.packages}
    listed = subprocess.run(
        [
            str(require_tool("qemu-arm")),
            "-L",
            str(trees["libc6"]),
            str(trees["busybox"] / "bin/busybox"),
            "--list-full",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if listed.returncode != 0 or not listed.stdout.strip():
        raise UserError(
            f"busybox --list-full under qemu-arm: {last_line(listed.stderr) or f'exit {listed.returncode}'}"
        )
    names = {
        posixpath.basename(path)
        for path in present
        if path.startswith(f"{USERLAND}/") and posixpath.dirname(path).removeprefix(f"{USERLAND}/") in PATH_DIRS
    }
    return [
        Entry(f"{USERLAND}/{applet}", stat.S_IFLNK | 0o777, b"/bin/busybox")
        for applet in sorted(listed.stdout.split())
        if posixpath.basename(applet) not in names
    ]


def module_entries(kernel: Kernel) -> list[Entry]:
    """The modules the smoke run needs, their dependencies (from each module's own modinfo: the host
    may have no depmod), and the modules.dep busybox modprobe reads."""
    available = {path.name.removesuffix(".ko").replace("-", "_"): path for path in kernel.modules.rglob("*.ko")}
    info = {name: modinfo(path) for name, path in available.items()}
    depends = {
        name: [d.replace("-", "_") for d in fields.get("depends", [""])[0].split(",") if d]
        for name, fields in info.items()
    }
    wanted = [*STAGE1_MODULES, *FIREWALL_MODULES] + sorted(
        name
        for name, path in available.items()
        if path.name.startswith(ON_DEMAND_PREFIX) and any(d in path.as_posix() for d in MODULE_DIRS)
    )
    closure: dict[str, list[str]] = {}
    for name in wanted:
        _closure(name.replace("-", "_"), depends, closure)
    prefix = f"{USERLAND}/lib/modules/{kernel.version}"
    rel = {name: available[name].relative_to(kernel.modules).as_posix() for name in closure}
    dep_lines = [f"{rel[name]}: {' '.join(rel[d] for d in closure[name])}".rstrip() for name in sorted(closure)]
    entries = [Entry(f"{prefix}/{rel[name]}", stat.S_IFREG | 0o644, available[name].read_bytes()) for name in closure]
    entries.append(Entry(f"{prefix}/modules.dep", stat.S_IFREG | 0o644, ("\n".join(dep_lines) + "\n").encode()))
    # The names the kernel asks modprobe for (nft-expr-redir, net-pf-16-proto-12...).
    aliases = sorted(f"alias {alias} {name}" for name in closure for alias in info[name].get("alias", []))
    entries.append(Entry(f"{prefix}/modules.alias", stat.S_IFREG | 0o644, ("\n".join(aliases) + "\n").encode()))
    for extra in ("modules.builtin", "modules.order"):
        if (kernel.modules / extra).is_file():
            entries.append(Entry(f"{prefix}/{extra}", stat.S_IFREG | 0o644, (kernel.modules / extra).read_bytes()))
    return with_parent_dirs(entries)


def modinfo(path: Path) -> dict[str, list[str]]:
    """The fields of a module's .modinfo section (depends=, alias=...): the host may have no depmod."""
    from elftools.elf.elffile import ELFFile

    with path.open("rb") as fh:
        section = ELFFile(fh).get_section_by_name(".modinfo")
        data = section.data() if section is not None else b""
    fields: dict[str, list[str]] = {}
    for field in data.split(b"\0"):
        key, _, value = field.decode(errors="replace").partition("=")
        if value:
            fields.setdefault(key, []).append(value)
    return fields


def _closure(name: str, depends: dict[str, list[str]], closure: dict[str, list[str]]) -> list[str]:
    """Every module `name` needs, dependencies first (modules.dep order: the last one loads first)."""
    if name in closure:
        return closure[name]
    closure[name] = []
    ordered: list[str] = []
    for dependency in depends.get(name, []):
        for needed in [dependency, *_closure(dependency, depends, closure)]:
            if needed not in ordered:
                ordered.append(needed)
    closure[name] = ordered
    return ordered


def with_parent_dirs(entries: list[Entry]) -> list[Entry]:
    paths = {entry.path for entry in entries}
    dirs = {posixpath.dirname(path) for path in paths}
    while "" not in dirs or any(posixpath.dirname(d) not in dirs for d in dirs if d):
        dirs |= {posixpath.dirname(d) for d in dirs}
    return entries + [Entry(d, stat.S_IFDIR | 0o755) for d in sorted(dirs - paths - {""})]


def base_archive(userland: Userland, cache: Path) -> Path:
    """The userland archive, from the cache when these .debs made it before."""
    key = hashlib.sha256("\n".join((*userland.debs, *STAGE1_MODULES, *FIREWALL_MODULES, "9")).encode()).hexdigest()
    path = cache / f"userland-{key[:16]}.cpio"
    if not path.is_file():
        for stale in cache.glob("userland-*.cpio*"):
            stale.unlink()
        write_bytes_atomic(path, cpio_newc(userland_entries(userland)))
    return path


def guest_file(name: str) -> bytes:
    return (GUEST_DIR / name).read_bytes()


def run_archive(settings: dict[str, str], probe: bytes, extra: dict[str, bytes], overlay: Path, base: Path) -> bytes:
    """/init, the agent, the service bridges, a stub for each Alpine service enabled in the root
    the userland archive (`base`) and the overlay make that no package here provides and another
    service needs, and this run's settings (shell assignments)."""
    userland = {entry.path: entry for entry in in_root(read_cpio(base.read_bytes()))}
    on_top = {entry.path: entry for entry in tree_entries(overlay, "")}
    root = {**userland, **on_top}
    absent = absent_services(root, {f"etc/init.d/{name}" for name in SERVICE_BRIDGES})
    scripts = [entry.data for path, entry in root.items() if path.startswith("etc/init.d/")]
    needed = needed_services([*scripts, *(guest_file(f"init.d/{name}") for name in SERVICE_BRIDGES)])
    stubs = {service: alpine_stub(service) for service in absent if service.partition("/")[2] in needed}
    added = [*userland_files(probe, extra), *stubs.values()]
    skipped = " ".join(service for service in absent if service not in stubs)
    run_settings = {**settings, "BK_STUBBED": " ".join(stubs), "BK_SKIPPED": skipped}
    conf = "".join(f"{key}={shlex.quote(value)}\n" for key, value in sorted(run_settings.items()))
    added.append(Entry(f"{USERLAND}/etc/bk-smoke/smoke.conf", stat.S_IFREG | 0o644, conf.encode()))
    entries = [
        Entry("init", stat.S_IFREG | 0o755, guest_file("init")),
        Entry("lib", stat.S_IFLNK | 0o777, f"{USERLAND}/lib".encode()),
        *added,
    ]
    return cpio_newc(with_parent_dirs(entries))


def userland_files(probe: bytes, extra: dict[str, bytes]) -> list[Entry]:
    libexec = f"{USERLAND}/usr/libexec/bk-smoke"
    return [
        Entry(f"{libexec}/stage2", stat.S_IFREG | 0o755, guest_file("stage2")),
        Entry(f"{libexec}/agent", stat.S_IFREG | 0o755, guest_file("agent")),
        Entry(f"{libexec}/probe", stat.S_IFREG | 0o755, probe),
        Entry(f"{USERLAND}/etc/inittab", stat.S_IFREG | 0o644, guest_file("inittab")),
        # Debian's OpenRC reads LSB headers with insserv's configuration, which nothing here needs.
        Entry(f"{USERLAND}/etc/insserv.conf", stat.S_IFREG | 0o644),
        Entry(f"{USERLAND}/etc/insserv.conf.d", stat.S_IFDIR | 0o755),
        *(
            Entry(f"{USERLAND}/etc/init.d/{name}", stat.S_IFREG | 0o755, guest_file(f"init.d/{name}"))
            for name in SERVICE_BRIDGES
        ),
        *(Entry(f"{USERLAND}/{path}", stat.S_IFREG | 0o644, data) for path, data in extra.items()),
    ]


def in_root(entries: list[Entry]) -> list[Entry]:
    """The entries under /userland, at their place in the booted root."""
    prefix = f"{USERLAND}/"
    return [Entry(e.path.removeprefix(prefix), e.mode, e.data) for e in entries if e.path.startswith(prefix)]


def absent_services(root: dict[str, Entry], bridges: set[str]) -> list[str]:
    """RUNLEVEL/NAME of each service enabled in the root (a link in /etc/runlevels, which the
    integrity gate checks for the overlay's) that neither the overlay nor a package here provides:
    Alpine's own services (devfs, mdev, hwdrivers, modloop...), whose work the initramfs has done
    or which have nothing to do in the emulator. OpenRC skips a runlevel's link to a script that is
    not there, as it would on Alpine for a package not installed."""
    absent = []
    for path, entry in sorted(root.items()):
        runlevel, _, name = path.removeprefix("etc/runlevels/").partition("/")
        script = f"etc/init.d/{name}"
        if path.startswith("etc/runlevels/") and stat.S_ISLNK(entry.mode) and script not in {*root, *bridges}:
            absent.append(f"{runlevel}/{name}")
    return absent


def needed_services(scripts: list[bytes]) -> set[str]:
    """The services OpenRC scripts `need` in their depend(): OpenRC refuses to start a service that
    needs one that is not there, so those of the absent ones get a stub."""
    needed: set[str] = set()
    for script in scripts:
        if script.startswith(b"#!/sbin/openrc-run"):
            for words in NEED_LINE.findall(script.decode(errors="replace")):
                needed.update(words.split())
    return needed


def alpine_stub(service: str) -> Entry:
    """A script that starts and says what it stands for."""
    name = service.partition("/")[2]
    return Entry(f"{USERLAND}/etc/init.d/{name}", stat.S_IFREG | 0o755, STUB.format(name=name).encode())


def probe_program(syscall: int) -> bytes:
    """A static ARM EABI executable of 16 instructions: it makes syscall `syscall` with zero
    arguments and exits 0 if it succeeded, else with the errno (EPERM = 1: the filter refused it)."""
    code = [
        0xE59F7038,  # ldr r7, [pc, #56]  (the literal after the code)
        *(0xE3A00000 | (reg << 12) for reg in range(6)),  # mov rN, #0
        0xEF000000,  # svc #0
        0xE3500000,  # cmp r0, #0
        0xB2600000,  # rsblt r0, r0, #0  (errno)
        0xA3A00000,  # movge r0, #0
        0xE3A070F8,  # mov r7, #248  (exit_group)
        0xEF000000,  # svc #0
        0xE3A07001,  # mov r7, #1  (exit, should exit_group be refused)
        0xEF000000,  # svc #0
        0xEAFFFFFE,  # b .
    ]
    return arm_executable(struct.pack(f"<{len(code)}II", *code, syscall))


def exit_zero_program() -> bytes:
    """A static ARM EABI executable that exits 0 at once and prints nothing."""
    code = [
        0xE3A00000,  # mov r0, #0
        0xE3A070F8,  # mov r7, #248  (exit_group)
        0xEF000000,  # svc #0
        0xE3A07001,  # mov r7, #1  (exit, should exit_group be refused)
        0xEF000000,  # svc #0
    ]
    return arm_executable(struct.pack(f"<{len(code)}I", *code))


def arm_executable(body: bytes) -> bytes:
    """A static ARM EABI ELF executable of one segment, `body`, entered at its first instruction."""
    base, header_size = 0x10000, 52 + 32
    total = header_size + len(body)
    elf_header = (
        b"\x7fELF\x01\x01\x01"
        + b"\0" * 9
        + struct.pack("<HHIIIIIHHHHHH", 2, 40, 1, base + header_size, 52, 0, 0x05000000, 52, 32, 1, 0, 0, 0)
    )
    program_header = struct.pack("<IIIIIIII", 1, 0, base, base, total, total, 5, 0x1000)
    return elf_header + program_header + body
