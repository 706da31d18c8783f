"""The payload's seccomp filter: an allow-list of ARM EABI syscalls, compiled at package time.

The list is data: verify/seccomp/base.toml, then verify/seccomp/<kind>.toml, then the recipe's
`run.limits.syscalls`. libseccomp itself (the system's libseccomp.so.2, through ctypes) resolves
the names in its ARM table and compiles the classic-BPF program that `bwrap --seccomp FD` loads on
the device. A syscall outside the list fails with EPERM: a denied call is an error the service can
report, where SECCOMP_RET_KILL would turn a missing entry into a dead device; what an attacker can
reach is bounded the same way. Any other architecture (OABI, a smuggled x86 binary under a
binfmt handler) is killed outright.

Both forms go into the overlay, pinned by the manifest: the source (`<name>.seccomp.txt`: every
allowed syscall with its number and why) and the program (`<name>.seccomp.bpf`). `evaluate` is a
small classic-BPF interpreter: under user-mode QEMU the filter cannot act (the emulator makes host
syscalls), so `buildkit smoke` and the tests run the compiled program on the ARM numbers instead and
check it against its source.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import struct
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from buildkit.errors import UserError
from buildkit.resources import VERIFY_DIR
from buildkit.schema import Where, from_table, read_toml

SECCOMP_DIR = VERIFY_DIR / "seccomp"
SYSCALL_NAME_RE = re.compile(r"_?[a-z][a-z0-9_]*")
LIBSECCOMP = "libseccomp.so.2"  # by its soname: ctypes.util.find_library would run ldconfig
BASE_POLICY = "base"

AUDIT_ARCH_ARM = 0x40000028  # EM_ARM | __AUDIT_ARCH_LE: what the kernel reports for an EABI syscall
AUDIT_ARCH_X86_64 = 0xC000003E
SCMP_ARCH_NATIVE = 0
SCMP_FLTATR_ACT_BADARCH = 2
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ACTION_FULL = 0xFFFF0000
DEFAULT_ACTION = SECCOMP_RET_ERRNO | errno.EPERM
# ARM's private syscalls (set_tls, cacheflush...) sit at 0xf0000 and up, after the numbered table.
ARM_PRIVATE_BASE = 0xF0000
ARM_TABLE_END = 0x1000


@dataclass(frozen=True)
class SyscallGroup:
    reason: str
    syscalls: tuple[str, ...]


@dataclass(frozen=True)
class Policy:
    description: str
    allow: tuple[SyscallGroup, ...]


@dataclass(frozen=True)
class Allowed:
    name: str
    number: int
    reason: str


@dataclass(frozen=True)
class Filter:
    allowed: tuple[Allowed, ...]  # sorted by number
    program: bytes  # classic BPF, struct sock_filter[] in the host's (= the Pi's) little-endian order

    @property
    def source_text(self) -> str:
        lines = [
            "# seccomp allow-list of this payload (buildkit). Architecture: ARM EABI (AUDIT_ARCH_ARM 0x40000028).",
            "# Any syscall not listed: ERRNO(EPERM). Any other architecture: KILL_PROCESS.",
            "# Compiled by libseccomp into the .seccomp.bpf beside this file, loaded with bwrap --seccomp.",
            "# NUMBER NAME  # why",
        ]
        lines += [f"{entry.number} {entry.name}  # {entry.reason}" for entry in self.allowed]
        return "\n".join(lines) + "\n"


def policy_path(name: str) -> Path:
    return SECCOMP_DIR / f"{name}.toml"


@cache
def load_policy(name: str) -> Policy:
    path = policy_path(name)
    if not path.is_file():
        raise UserError(f"{path}: no seccomp policy for {name!r}")
    return from_table(Policy, read_toml(path), Where(path))


def requested_syscalls(kind: str, extra: tuple[str, ...]) -> dict[str, str]:
    """name → why, from the base policy, the kind's and the recipe's additions (first reason wins)."""
    wanted: dict[str, str] = {}
    for policy_name in (BASE_POLICY, kind):
        for group in load_policy(policy_name).allow:
            for name in group.syscalls:
                wanted.setdefault(name, f"{policy_name}: {group.reason}")
    for name in extra:
        wanted.setdefault(name, "added by the recipe (run.limits.syscalls)")
    return wanted


# ---------------------------------------------------------------------------------------------
# libseccomp


class _Lib:
    """The few libseccomp calls the compiler needs, typed."""

    def __init__(self) -> None:
        try:
            lib = ctypes.CDLL(LIBSECCOMP, use_errno=True)
        except OSError:
            raise UserError(
                "libseccomp.so.2 not found: install libseccomp2 (Debian/Ubuntu) or libseccomp (Alpine, Fedora)"
            ) from None
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        for name in ("seccomp_arch_add", "seccomp_arch_remove"):
            getattr(lib, name).argtypes = [ctypes.c_void_p, ctypes.c_uint32]
        lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
        lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
        lib.seccomp_syscall_resolve_name_arch.restype = ctypes.c_int
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
        lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
        self.lib = lib

    def resolve_arm(self, name: str) -> int:
        """The syscall's ARM EABI number; negative when ARM has no such syscall."""
        return int(self.lib.seccomp_syscall_resolve_name_arch(AUDIT_ARCH_ARM, name.encode()))

    def compile(self, names: list[str]) -> bytes:
        ctx = self.lib.seccomp_init(DEFAULT_ACTION)
        if not ctx:
            raise RuntimeError("seccomp_init failed")
        try:
            self._check("seccomp_arch_remove", self.lib.seccomp_arch_remove(ctx, SCMP_ARCH_NATIVE))
            self._check("seccomp_arch_add", self.lib.seccomp_arch_add(ctx, AUDIT_ARCH_ARM))
            self._check(
                "seccomp_attr_set", self.lib.seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, SECCOMP_RET_KILL_PROCESS)
            )
            for name in names:
                # seccomp_rule_add takes the build host's number (or libseccomp's pseudo-number for a
                # syscall the host lacks, e.g. set_tls) and translates it, by name, into ARM's.
                host_number = self.lib.seccomp_syscall_resolve_name(name.encode())
                self._check("seccomp_rule_add", self.lib.seccomp_rule_add(ctx, SECCOMP_RET_ALLOW, host_number, 0))
            with tempfile.TemporaryFile() as out:
                self._check("seccomp_export_bpf", self.lib.seccomp_export_bpf(ctx, out.fileno()))
                out.seek(0)
                return out.read()
        finally:
            self.lib.seccomp_release(ctx)

    @staticmethod
    def _check(call: str, rc: int) -> None:
        if rc != 0:
            raise RuntimeError(f"{call}: {os.strerror(-rc)}")


@cache
def _libseccomp() -> _Lib:
    return _Lib()


def unknown_on_arm(names: tuple[str, ...]) -> list[str]:
    """The names that are not ARM EABI syscalls (for the recipe check, which names its key)."""
    if not names:
        return []
    lib = _libseccomp()
    return [name for name in names if not SYSCALL_NAME_RE.fullmatch(name) or lib.resolve_arm(name) < 0]


def build_filter(kind: str, extra: tuple[str, ...] = ()) -> Filter:
    """The payload's filter: the policies' and the recipe's syscalls, resolved and compiled."""
    lib = _libseccomp()
    allowed = []
    for name, reason in requested_syscalls(kind, extra).items():
        number = lib.resolve_arm(name)
        if number < 0:
            raise UserError(f"seccomp: {name!r} ({reason}) is not an ARM EABI syscall")
        allowed.append(Allowed(name, number, reason))
    allowed.sort(key=lambda entry: (entry.number, entry.name))
    return Filter(tuple(allowed), lib.compile([entry.name for entry in allowed]))


# ---------------------------------------------------------------------------------------------
# Reading a compiled filter back


def parse_source(text: str) -> dict[int, str]:
    """number → name, from a filter's source text."""
    found = {}
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if len(words) == 2 and words[0].isdigit():
            found[int(words[0])] = words[1]
    return found


def evaluate(program: bytes, nr: int, arch: int = AUDIT_ARCH_ARM, args: tuple[int, ...] = (0,) * 6) -> int:
    """Run a classic-BPF seccomp program on one syscall (struct seccomp_data); the action it returns."""
    if len(program) % 8:
        raise ValueError(f"a BPF program is a whole number of 8-byte instructions, not {len(program)} bytes")
    data = struct.pack("<iIQ6Q", nr, arch, 0, *args)
    code = [struct.unpack_from("<HBBI", program, offset) for offset in range(0, len(program), 8)]
    acc = index = 0
    scratch = [0] * 16
    x = 0
    while index < len(code):
        op, jt, jf, k = code[index]
        index += 1
        if op == 0x20:  # ld [k]
            (acc,) = struct.unpack_from("<I", data, k)
        elif op == 0x00:  # ld #k
            acc = k
        elif op == 0x60:  # ld M[k]
            acc = scratch[k]
        elif op == 0x02:  # st M[k]
            scratch[k] = acc
        elif op == 0x01:  # ldx #k
            x = k
        elif op == 0x07:  # tax
            x = acc
        elif op == 0x87:  # txa
            acc = x
        elif op == 0x54:  # and #k
            acc &= k
        elif op == 0x44:  # or #k
            acc |= k
        elif op == 0x05:  # ja k
            index += k
        elif op in (0x15, 0x25, 0x35, 0x45):  # jeq, jgt, jge, jset #k
            taken = {0x15: acc == k, 0x25: acc > k, 0x35: acc >= k, 0x45: bool(acc & k)}[op]
            index += jt if taken else jf
        elif op == 0x06:  # ret #k
            return k
        elif op == 0x16:  # ret a
            return acc
        else:
            raise ValueError(f"BPF instruction {index - 1}: opcode {op:#x} is not one a seccomp filter uses here")
    raise ValueError("the BPF program runs off its end without a return")


def action_name(action: int) -> str:
    if action == SECCOMP_RET_ALLOW:
        return "ALLOW"
    if action & SECCOMP_RET_ACTION_FULL == SECCOMP_RET_ERRNO:
        return f"ERRNO({errno.errorcode.get(action & 0xFFFF, action & 0xFFFF)})"
    if action == SECCOMP_RET_KILL_PROCESS:
        return "KILL_PROCESS"
    return f"{action:#x}"


def check_compiled(program: bytes, source: dict[int, str]) -> list[str]:
    """Where the compiled program and its source disagree (empty: they agree). Every ARM number of
    the table and the private range is tried; another architecture must be killed."""
    problems = []
    for nr in (*range(ARM_TABLE_END), *range(ARM_PRIVATE_BASE, ARM_PRIVATE_BASE + 8)):
        action = evaluate(program, nr)
        expected = SECCOMP_RET_ALLOW if nr in source else DEFAULT_ACTION
        if action != expected:
            name = source.get(nr, f"syscall {nr}")
            problems.append(f"{name} ({nr}): {action_name(action)}, source says {action_name(expected)}")
    for nr in sorted(source)[:1] or [0]:
        if (action := evaluate(program, nr, arch=AUDIT_ARCH_X86_64)) != SECCOMP_RET_KILL_PROCESS:
            problems.append(f"x86-64 syscall {nr}: {action_name(action)}, expected KILL_PROCESS")
    return problems
