"""The sandbox's bounds as the recipe states them ([run.limits]) and as the overlay carries them:
one-line refusals naming the key, the payload's configuration, and the seccomp filter compiled by
libseccomp, checked against its source by running the BPF program on every ARM syscall number."""

from __future__ import annotations

import pytest

from buildkit import seccomp
from buildkit.build.kinds import KINDS
from buildkit.errors import UserError
from buildkit.package import render_overlay
from buildkit.recipe import load_recipe
from support.package import RECIPE_TOML, make_key, write_recipe

# Never in a default policy: each would let a payload reach past its sandbox or the kernel's defences.
NEVER_ALLOWED = (
    "ptrace", "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "kexec_load", "kexec_file_load",
    "init_module", "finit_module", "delete_module", "bpf", "perf_event_open", "keyctl", "add_key", "request_key",
    "userfaultfd", "process_vm_readv", "process_vm_writev", "settimeofday", "clock_settime", "reboot", "swapon",
    "open_by_handle_at", "personality", "io_uring_setup",
)  # fmt: skip
ARM = {"read": 3, "ptrace": 26, "mount": 21, "mmap2": 192, "set_tls": 0xF0005, "futex_time64": 422, "personality": 136}


def limits_recipe(tmp_path, limits: str):
    return write_recipe(tmp_path, RECIPE_TOML + f"\n[run.limits]\n{limits}\n")


MISTAKES = {
    "total below the sizes": ("tmpfs_total_mb = 20", "run.limits.tmpfs_total_mb", "more than the 20 MiB stated"),
    "total over a quarter of the RAM": ("tmpfs_total_mb = 200", "run.limits.tmpfs_total_mb", "1/4 of the 512 MB"),
    "size for a path that is no tmpfs": ('tmpfs = { "/srv/x" = 4 }', 'run.limits.tmpfs."/srv/x"', "not a tmpfs"),
    "size zero": ('tmpfs = { "/tmp" = 0 }', 'run.limits.tmpfs."/tmp"', "from 1 to 1024"),
    "no processes": ("processes = 0", "run.limits.processes", "from 8 to 4096"),
    "address space beyond 32 bits": ("address_space_mb = 4096", "run.limits.address_space_mb", "from 64 to 3072"),
    "not an ARM syscall": ('syscalls = ["getpid", "select"]', "run.limits.syscalls.1", "not an ARM EABI syscall"),
    "not a name": ('syscalls = ["getpid\\u0000x"]', "run.limits.syscalls.0", "not an ARM EABI syscall"),
}


@pytest.mark.parametrize("limits, key, words", MISTAKES.values(), ids=MISTAKES.keys())
def test_a_limit_the_device_cannot_hold_is_refused_naming_its_key(tmp_path, limits, key, words):
    recipe = limits_recipe(tmp_path, limits)
    with pytest.raises(UserError) as refused:
        load_recipe(recipe)
    message = str(refused.value)
    assert f"{recipe}/recipe.toml: {key}: " in message and words in message and "\n" not in message


def test_the_cli_refuses_a_limit_with_exit_2_and_one_line(run_cli, tmp_path):
    recipe = limits_recipe(tmp_path, "tmpfs_total_mb = 256")
    result = run_cli("build", recipe, "--out", tmp_path / "out", env={"BUILDKIT_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().count("\n") == 0 and "run.limits.tmpfs_total_mb" in result.stderr


def rendered(tmp_path, limits: str = "") -> dict[str, bytes]:
    recipe = load_recipe(limits_recipe(tmp_path, limits))
    overlay = render_overlay(recipe, make_key(tmp_path / "key").public(), 1_700_000_000)
    return {entry.path: entry.data for entry in overlay if entry.kind == "file"}


def test_the_payload_configuration_carries_the_limits_and_every_tmpfs_size(tmp_path):
    files = rendered(
        tmp_path,
        'processes = 40\nopen_files = 512\naddress_space_mb = 600\ntmpfs_mb = 8\ntmpfs = { "/var/lib/demo" = 32 }',
    )
    conf = files["etc/buildkit/demo.conf"].decode()
    for line in (
        "BK_TMPFS='/tmp:8 /var/lib/demo:32'",
        "BK_LIMIT_NPROC=40",
        "BK_LIMIT_NOFILE=512",
        f"BK_LIMIT_AS_KB={600 * 1024}",
        "BK_SECCOMP=/etc/buildkit/demo.seccomp.bpf",
    ):
        assert line in conf.splitlines()


def test_the_defaults_are_sized_too(tmp_path):
    conf = rendered(tmp_path)["etc/buildkit/demo.conf"].decode()
    assert "BK_TMPFS='/tmp:16 /var/lib/demo:16'" in conf and "BK_LIMIT_NPROC=64" in conf


def test_the_compiled_filter_does_what_its_source_says(tmp_path):
    files = rendered(tmp_path)
    program, source = files["etc/buildkit/demo.seccomp.bpf"], files["etc/buildkit/demo.seccomp.txt"].decode()
    allowed = seccomp.parse_source(source)
    assert seccomp.check_compiled(program, allowed) == []
    assert allowed[ARM["read"]] == "read" and allowed[ARM["set_tls"]] == "set_tls" and ARM["ptrace"] not in allowed
    assert seccomp.evaluate(program, ARM["mmap2"]) == seccomp.SECCOMP_RET_ALLOW
    assert seccomp.evaluate(program, ARM["futex_time64"]) == seccomp.SECCOMP_RET_ALLOW
    assert seccomp.evaluate(program, ARM["ptrace"]) == seccomp.SECCOMP_RET_ERRNO | 1  # EPERM
    assert seccomp.evaluate(program, ARM["mount"]) == seccomp.SECCOMP_RET_ERRNO | 1
    x86_read = 0
    assert seccomp.evaluate(program, x86_read, arch=seccomp.AUDIT_ARCH_X86_64) == seccomp.SECCOMP_RET_KILL_PROCESS


def test_a_recipe_adds_a_syscall_to_its_filter(tmp_path):
    files = rendered(tmp_path, 'syscalls = ["personality"]')
    program = files["etc/buildkit/demo.seccomp.bpf"]
    assert seccomp.evaluate(program, ARM["personality"]) == seccomp.SECCOMP_RET_ALLOW
    assert "personality  # added by the recipe" in files["etc/buildkit/demo.seccomp.txt"].decode()
    default = rendered(tmp_path / "default")["etc/buildkit/demo.seccomp.bpf"]
    assert seccomp.evaluate(default, ARM["personality"]) == seccomp.SECCOMP_RET_ERRNO | 1


def test_the_filter_is_the_same_bytes_every_time_whatever_the_order_of_additions():
    first = seccomp.build_filter("go", ("personality", "mlock"))
    again = seccomp.build_filter("go", ("mlock", "personality"))
    assert first.program == again.program and first.source_text == again.source_text
    assert len(first.program) % 8 == 0 and first.program != seccomp.build_filter("python").program


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_a_policy_of_arm_syscalls_with_reasons_and_nothing_dangerous(kind):
    wanted = seccomp.requested_syscalls(kind, ())
    assert seccomp.unknown_on_arm(tuple(wanted)) == []
    assert all(reason.strip() for reason in wanted.values())
    assert sorted(set(NEVER_ALLOWED) & set(wanted)) == []
    names = [
        name for policy in ("base", kind) for group in seccomp.load_policy(policy).allow for name in group.syscalls
    ]
    assert len(names) == len(set(names)), "a syscall listed twice"


def test_the_interpreter_refuses_what_it_cannot_run():
    with pytest.raises(ValueError, match="opcode"):
        seccomp.evaluate(bytes.fromhex("ff00000000000000"), 0)
    with pytest.raises(ValueError, match="runs off its end"):
        seccomp.evaluate(bytes.fromhex("2000000000000000"), 0)
