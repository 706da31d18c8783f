"""The scan on whole programs from real compilers: Go GOARM=6 against GOARM=7, and gcc for ARMv7
against ARMv6 (ARM and Thumb state), with .ARM.attributes removed so the scan is the only
witness. qemu-arm -cpu arm1176 confirms each verdict."""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import pytest

from buildkit.archgate.codescan import MAX_HITS_PER_OBJECT
from support import REPO, require_tools
from support.codescan import CROSS, on_arm1176, profile_rules, run, scan_file, stripped

GO_PROGRAM = """package main

import (
	"math"
	"os"
	"strconv"
	"sync/atomic"
)

func main() {
	var n atomic.Int64
	n.Add(int64(len(os.Args)))
	os.Stdout.WriteString("hello " + strconv.FormatFloat(math.Sqrt(float64(n.Load())*1.5), 'f', 3, 64) + "\\n")
}
"""

# Go's ARM runtime picks these at run time: DMB only when the CPU is ARMv7 (runtime.goarm /
# HasV7Atomics), UDIV only when HWCAP_IDIVA says the CPU divides.
GO_GUARDED = (
    "internal/runtime/atomic.",
    "runtime/internal/atomic.",
    "runtime.armPublicationBarrier",
    "runtime.udiv",
    "armCas64",
    "armXadd64",
    "armXchg64",
    "armLoad64",
    "armStore64",
    "armAnd8",
    "armOr8",
    "armXchg8",
)


@pytest.fixture(scope="session")
def go_binaries(tmp_path_factory) -> dict[str, Path]:
    """hello for GOARM=6 and 7 built the way the Go backend builds (stripped, -trimpath), and
    GOARM=6 with its symbols; with the backend's shared build cache, so the standard library is
    compiled once per GOARM."""
    from buildkit.build.go import BUILD_FLAGS
    from buildkit.context import cache_dir, project_root
    from buildkit.target import load_target
    from buildkit.toolchain import go_environment, require_tool

    go = require_tool("go")
    src = tmp_path_factory.mktemp("gosrc")
    (src / "main.go").write_text(GO_PROGRAM)
    (src / "go.mod").write_text("module example.com/hello\n\ngo 1.22\n")
    env = {**go_environment(cache_dir(project_root(REPO)) / "go-toolchain"), **load_target("pi1").go_env}
    with_symbols = [*(f for f in BUILD_FLAGS if not f.startswith("-ldflags")), "-ldflags=-buildid="]
    binaries = {}
    for name, goarm, flags in (("6", "6", BUILD_FLAGS), ("7", "7", BUILD_FLAGS), ("6-symbols", "6", with_symbols)):
        out = src / f"hello-goarm{name}"
        subprocess.run(
            [str(go), "build", *flags, "-o", str(out), "."],
            cwd=src,
            env={**env, "GOARM": goarm},
            check=True,
            capture_output=True,
            timeout=600,
        )
        binaries[name] = out
    return binaries


@pytest.mark.slow
def test_go_goarm6_has_only_runtime_guarded_barriers_and_divide(go_binaries):
    result = scan_file(go_binaries["6"])
    assert not result.used_mapping_symbols
    rules = {h.rule for h in result.hits}
    assert "code.databarrier" in rules and rules <= {"code.databarrier", "code.divide"}
    assert on_arm1176(go_binaries["6"]).stdout == "hello 1.225\n"


@pytest.mark.slow
def test_go_goarm6_hits_lie_in_the_runtime_functions_that_check_the_cpu_first(go_binaries):
    stripped_hits = [(h.address, h.rule, h.symbol) for h in scan_file(go_binaries["6"]).hits]
    named_hits = scan_file(go_binaries["6-symbols"]).hits
    assert [(h.address, h.rule, None) for h in named_hits] == stripped_hits
    assert all(h.symbol and h.symbol.startswith(GO_GUARDED) for h in named_hits), sorted(
        {h.symbol for h in named_hits if not (h.symbol or "").startswith(GO_GUARDED)}
    )


@pytest.mark.slow
def test_go_goarm7_has_v6t2_and_vfp3_hits_and_sigills(go_binaries):
    result = scan_file(go_binaries["7"])
    rules = Counter(h.rule for h in result.hits)
    assert rules["code.v6t2"] > 10 and rules["code.vfp3"] > 0
    assert len(result.hits) == MAX_HITS_PER_OBJECT < result.total_hits
    assert on_arm1176(go_binaries["7"]).returncode == -4  # SIGILL


C_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((noinline)) unsigned field(unsigned x) { return (x >> 7) & 0x1f; }
__attribute__((noinline)) unsigned mix(unsigned x) { return x * 0x12345679u + 0xdeadbeefu; }
__attribute__((noinline)) double norm(double a, double b) { return a * a + b / 3.0; }
int main(int argc, char **argv) {
    unsigned v = argc > 1 ? (unsigned)strtoul(argv[1], 0, 0) : 1000;
    printf("%u %u %.3f\n", field(v), mix(v), norm(v, 2.0));
    return 0;
}
"""
C_OUTPUT = "7 4213147543 1000000.667\n"


def compile_c(tmp: Path, name: str, *flags: str) -> Path:
    """A program without .ARM.attributes: the scan is the only witness left."""
    src, out = tmp / "prog.c", tmp / name
    src.write_text(C_PROGRAM)
    run(f"{CROSS}gcc", "-O2", *flags, "-o", out, src)
    run(f"{CROSS}objcopy", "--remove-section=.ARM.attributes", out)
    return out


@pytest.fixture(scope="module")
def c_programs(tmp_path_factory) -> dict[str, Path]:
    require_tools(f"{CROSS}gcc", f"{CROSS}objcopy", "qemu-arm")
    tmp = tmp_path_factory.mktemp("cprog")
    return {
        "armv7": compile_c(tmp, "armv7", "-march=armv7-a", "-marm"),
        "armv7-thumb": compile_c(tmp, "armv7-thumb", "-march=armv7-a", "-mthumb"),
        "armv6": compile_c(tmp, "armv6", "-march=armv6", "-marm"),
        "armv6-thumb": compile_c(tmp, "armv6-thumb", "-march=armv6", "-mthumb"),
        "armv6kz-vfp": compile_c(tmp, "armv6kz-vfp", "-march=armv6kz+fp", "-mfpu=vfp", "-mfloat-abi=softfp"),
    }


@pytest.mark.parametrize("name", ["armv7", "armv7-thumb"])
def test_gcc_armv7_code_is_found_and_sigills(c_programs, name):
    result = scan_file(c_programs[name])
    found = {(h.symbol, h.rule) for h in result.hits}
    state_rule = "code.thumb2" if name.endswith("thumb") else "code.v6t2"
    assert {("field", state_rule), ("mix", state_rule)} <= found
    assert on_arm1176(c_programs[name]).returncode == -4


def test_gcc_armv7_stripped_of_everything_is_still_found(c_programs):
    result = scan_file(stripped(c_programs["armv7"]))
    assert not result.used_mapping_symbols
    assert {h.mnemonic for h in result.hits} >= {"ubfx", "movw", "movt"}


@pytest.mark.parametrize("name", ["armv6", "armv6-thumb", "armv6kz-vfp"])
def test_gcc_armv6_code_has_no_hits_and_runs(c_programs, name):
    result = scan_file(c_programs[name])
    assert result.hits == () and result.bytes_scanned > 400
    assert on_arm1176(c_programs[name]).stdout == C_OUTPUT


@pytest.mark.parametrize("name", ["armv6", "armv6kz-vfp"])
def test_gcc_armv6_stripped_has_no_hits(c_programs, name):
    assert scan_file(stripped(c_programs[name])).hits == ()


THUMB_LIBRARY = r"""
__attribute__((noinline)) static unsigned hidden(unsigned x) { return (x >> 7) & 0x1f; }
unsigned exported(unsigned x) { return hidden(x) * 0x12345679u; }
unsigned also_exported(unsigned x) { return x / 3u; }
"""


def test_a_stripped_thumb_library_is_read_in_the_state_of_its_exported_functions(tmp_path):
    """Only .dynsym is left, and it names no static function; the code between the exported
    functions is read as Thumb because they are Thumb, not as ARM noise."""
    src, lib = tmp_path / "lib.c", tmp_path / "libthumb.so"
    src.write_text(THUMB_LIBRARY)
    run(f"{CROSS}gcc", "-O2", "-shared", "-fPIC", "-march=armv7-a", "-mthumb", "-o", lib, src)
    found = {(h.symbol, h.mnemonic, h.state, h.rule) for h in scan_file(stripped(lib)).hits}
    assert (None, "ubfx", "thumb", "code.thumb2") in found  # inside `hidden`
    assert ("exported", "movw", "thumb", "code.thumb2") in found


def test_the_armv7_profile_accepts_armv7_code(c_programs):
    armv7 = profile_rules("armv7")
    assert scan_file(c_programs["armv7"], armv7).hits == ()
    assert scan_file(c_programs["armv7-thumb"], armv7).hits == ()
