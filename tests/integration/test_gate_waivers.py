"""The shipped waivers (verify/waivers/) and the evidence each rests on: the guarded code runs on
`qemu-arm -cpu arm1176`, and the same qemu faults when the unguarded instruction is executed."""

from __future__ import annotations

from pathlib import Path

from support import require_tools
from support.gate import ARMEL, GO_OUTPUT, gate, run, run_arm1176, runs_on_arm1176

LIBATOMIC = Path(ARMEL) / "lib" / "libatomic.so.1"

# Every libatomic entry point size through the IFUNC resolvers: the 8-byte ones as gcc calls them
# for ARMv5TE, the 1/2/4-byte ones through dlsym (gcc would inline those with kernel helpers).
ATOMICS_PROGRAM = r"""
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
volatile uint64_t v64 = 5;
volatile uint32_t v32 = 7;
volatile uint16_t v16 = 3;
volatile uint8_t v8 = 1;
typedef uint8_t (*fetch_or_1)(volatile void *, uint8_t, int);
typedef uint16_t (*exchange_2)(volatile void *, uint16_t, int);
typedef uint32_t (*fetch_sub_4)(volatile void *, uint32_t, int);
typedef _Bool (*cas_4)(volatile void *, void *, uint32_t, _Bool, int, int);
static void *need(const char *name) {
    void *f = dlsym(RTLD_DEFAULT, name);
    if (!f) { printf("missing %s\n", name); exit(3); }
    return f;
}
int main(void) {
    uint64_t a = __atomic_fetch_add(&v64, 10, __ATOMIC_SEQ_CST);
    uint64_t expected = 15;
    int swapped = __atomic_compare_exchange_n(&v64, &expected, 99, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    uint64_t loaded = __atomic_load_n(&v64, __ATOMIC_SEQ_CST);
    __atomic_store_n(&v64, 7, __ATOMIC_SEQ_CST);
    uint8_t c = ((fetch_or_1)need("__atomic_fetch_or_1"))(&v8, 2, __ATOMIC_SEQ_CST);
    uint16_t b = ((exchange_2)need("__atomic_exchange_2"))(&v16, 9, __ATOMIC_SEQ_CST);
    uint32_t d = ((fetch_sub_4)need("__atomic_fetch_sub_4"))(&v32, 2, __ATOMIC_SEQ_CST);
    uint32_t old = 5;
    _Bool e = ((cas_4)need("__atomic_compare_exchange_4"))(&v32, &old, 11, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    printf("%llu %d %llu %llu %u %u %u %u %u %d %u\n", (unsigned long long)a, swapped, (unsigned long long)loaded,
           (unsigned long long)v64, c, v8, b, v16, d, e, v32);
    return 0;
}
"""
ATOMICS_OUTPUT = "5 1 99 7 1 3 3 9 7 1 11"


def test_qemu_arm1176_faults_on_dmb_and_udiv(tmp_path):
    """The premise of the shipped Go waivers: qemu's ARM1176 raises SIGILL on a bare DMB and UDIV
    (and a CPU that has them runs the same program), so a GOARM=6 run that exits 0 never executed them."""
    require_tools("arm-linux-gnueabi-gcc", "qemu-arm")
    programs = {
        "dmb": ("-march=armv7-a", 'int main(int c, char **v) { __asm__ volatile("dmb ish" ::: "memory"); return 0; }'),
        "udiv": (
            "-march=armv7ve",
            'int main(int c, char **v) { unsigned q; __asm__ volatile("udiv %0, %1, %2"'
            ' : "=r"(q) : "r"(c + 10), "r"(c)); return q == 11 ? 0 : 1; }',
        ),
    }
    for name, (march, source) in programs.items():
        (tmp_path / f"{name}.c").write_text(source + "\n")
        run("arm-linux-gnueabi-gcc", "-marm", march, "-static", "-o", tmp_path / name, tmp_path / f"{name}.c")
        assert run_arm1176(tmp_path / name, cpu="cortex-a15").returncode == 0
        assert run_arm1176(tmp_path / name).returncode != 0


def test_guarded_go_runtime_runs_on_arm1176(gate_go_binaries):
    """What verify/waivers/go-runtime.toml rests on: the GOARM=6 binary has DMB/UDIV in its
    runtime, runs its atomics, goroutines and divisions on the ARM1176, and the scan's hits are all
    waived by the shipped waivers, each with its reason."""
    binary = gate_go_binaries["go-goarm6"]
    assert runs_on_arm1176(binary, GO_OUTPUT)
    report = gate(binary, scan_code=True)
    assert report.ok, [(f.rule, f.message, f.evidence.get("symbols")) for f in report.errors]
    waived = {f.rule: f for f in report.waived}
    assert {"code.databarrier", "code.divide"} <= set(waived)
    assert all(f.waiver and f.waiver_reason for f in report.waived)
    assert "runtime.udiv" in waived["code.divide"].evidence["symbols"]


def test_debian_armel_libatomic_runs_on_arm1176_and_is_waived(tmp_path):
    """Debian armel's libatomic is tagged v7: GCC links an -march=armv7-a IFUNC alternative that is
    selected only when libat_have_strexbhd is set, which libatomic/config/linux/arm/init.c never
    does; the ARMv5TE code with kernel helpers runs instead. OpenSSL's libcrypto needs it."""
    require_tools("arm-linux-gnueabi-gcc", "qemu-arm")
    (tmp_path / "atomics.c").write_text(ATOMICS_PROGRAM)
    run("arm-linux-gnueabi-gcc", "-O2", "-o", tmp_path / "atomics", tmp_path / "atomics.c", "-latomic")
    assert runs_on_arm1176(tmp_path / "atomics", ATOMICS_OUTPUT, ARMEL)

    tree = tmp_path / "root" / "usr" / "lib" / "arm-linux-gnueabi"
    tree.mkdir(parents=True)
    (tree / "libatomic.so.1").write_bytes(LIBATOMIC.read_bytes())
    (tree / "libc.so.6").write_bytes((Path(ARMEL) / "lib" / "libc.so.6").read_bytes())
    (tmp_path / "root" / "lib").mkdir()
    (tmp_path / "root" / "lib" / "ld-linux.so.3").write_bytes((Path(ARMEL) / "lib" / "ld-linux.so.3").read_bytes())
    unwaived = gate(tree / "libatomic.so.1", scan_code=False)
    assert {f.rule for f in unwaived.errors} == {"attr.cpu_arch", "attr.thumb_isa_use"}  # a lone file: no path to match
    report = gate(tmp_path / "root", scan_code=True)
    assert report.ok, [(f.rule, f.message) for f in report.errors]
    assert {f.waiver for f in report.waived} >= {
        "debian-armel-libatomic-cpu-arch",
        "debian-armel-libatomic-thumb2",
        "debian-armel-libatomic-code",
    }
