"""The gate against artifacts nobody on this project wrote: wheels from PyPI, an npm package and
Debian packages, downloaded once (support/corpus.py) and run under `qemu-arm -cpu arm1176` for
the truth (and `-cpu max`, to show each is a working program). With the code scan on, as by
default, the verdict must be what the ARM1176 says: pass exactly when it runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from support import require_tools
from support.corpus import ARMEL_SYSROOT, ARMHF_SYSROOT, debian_deb, npm_tarball, pypi_wheel, run_arm, unpacked
from support.gate import gate, run
from support.pyrootfs import session_cache

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Case:
    fetch: Callable[[], Path]  # the artifact as a user gates it
    program: str  # inside it, run with `args`
    args: tuple[str, ...]
    sysroot: str | None = None  # qemu-arm -L, for a dynamically linked program


CASES = {
    # Rust, arm-unknown-linux-musleabihf: tagged v7/VFPv3/Thumb-2 by merged assembly objects, with
    # musl's v7 atomics and libgcc's D16-D31 helpers behind runtime checks.
    "pypi-ruff-armv6l": Case(
        lambda: pypi_wheel("ruff==0.17.6", "linux_armv6l"), "ruff-0.17.6.data/scripts/ruff", ("--version",)
    ),
    # Go, GOARM=7: movw, VFPv3 immediates and DMB; SIGILL on the ARM1176.
    "npm-esbuild-linux-arm": Case(
        lambda: npm_tarball("@esbuild/linux-arm@0.28.2"), "package/bin/esbuild", ("--version",)
    ),
    "debian-hello-armel": Case(
        lambda: debian_deb("h/hello/hello_2.10-3_armel.deb"), "usr/bin/hello", ("--version",), ARMEL_SYSROOT
    ),
    "debian-hello-armhf": Case(
        lambda: debian_deb("h/hello/hello_2.10-3_armhf.deb"), "usr/bin/hello", ("--version",), ARMHF_SYSROOT
    ),
}
KNOWN_GAPS = {
    # ring's NEON and ARMv8-crypto routines (ChaCha20, Poly1305, AES, GHASH), chosen in Rust after
    # getauxval(AT_HWCAP): only a call-graph analysis of a stripped binary could tell them apart.
    "pypi-uv-armv6l": Case(
        lambda: pypi_wheel("uv==0.13.9", "linux_armv6l"), "uv-0.13.9.data/scripts/uv", ("--version",)
    ),
}


def arm1176_runs(case: Case) -> bool:
    program = unpacked(case.fetch()) / case.program
    working = run_arm(program, *case.args, cpu="max", sysroot=case.sysroot)
    assert working.returncode == 0, f"not a working program even on -cpu max: {working.output}"
    return run_arm(program, *case.args, sysroot=case.sysroot).returncode == 0


@pytest.mark.parametrize(
    "name",
    [
        *sorted(CASES),
        *(
            pytest.param(name, marks=pytest.mark.xfail(strict=True, reason="runtime dispatch in Rust code"))
            for name in sorted(KNOWN_GAPS)
        ),
    ],
)
def test_the_gate_agrees_with_an_arm1176(name):
    case = CASES.get(name) or KNOWN_GAPS[name]
    runs = arm1176_runs(case)
    report = gate(case.fetch())
    assert report.ok == runs, (runs, [(f.path, f.rule, f.message) for f in report.errors])
    if runs:
        assert not any(f.rule.startswith("code.") for f in report.errors)


# Calls into Debian armel's libcrypto (AES with its in-.text tables, SHA-256 with K256), libssl,
# pixman and libstdc++ as a program of the tree would.
LIBRARIES_PROGRAM = r"""
#include <dlfcn.h>
#include <stdio.h>
const char *OpenSSL_version(int);
unsigned char *SHA256(const unsigned char *data, size_t n, unsigned char *md);
int AES_set_encrypt_key(const unsigned char *key, int bits, void *aes_key);
void AES_encrypt(const unsigned char *in, unsigned char *out, const void *aes_key);
int OPENSSL_init_ssl(unsigned long long opts, const void *settings);
void *pixman_image_create_solid_fill(const void *color);
int main(void) {
    unsigned char md[32], key[16], block[16], out[16];
    unsigned int aes_key[61];
    unsigned short color[4] = {0xffff, 0, 0, 0xffff};
    for (int i = 0; i < 16; i++) { key[i] = i; block[i] = i * 0x11; }
    SHA256((const unsigned char *)"abc", 3, md);
    AES_set_encrypt_key(key, 128, aes_key);
    AES_encrypt(block, out, aes_key);
    void *cxx = dlopen("libstdc++.so.6", RTLD_NOW);
    printf("%.7s %02x%02x %02x%02x %d %d %d\n", OpenSSL_version(0), md[0], md[1], out[0], out[1],
           OPENSSL_init_ssl(0, 0), pixman_image_create_solid_fill(color) != 0, cxx != 0);
    return 0;
}
"""
LIBRARIES_OUTPUT = "OpenSSL ba78 69c4 1 1 1\n"
FROM_THE_BUILD = ("libc6", "libssl3", "libatomic1", "libgcc-s1")
FROM_THE_POOL = ("g/gcc-12/libstdc++6_12.2.0-14+deb12u1_armel.deb", "p/pixman/libpixman-1-0_0.42.2-1_armel.deb")


def test_a_debian_armel_tree_with_crypto_pixman_and_cxx_passes_and_runs(hello_py_build, tmp_path_factory, tmp_path):
    require_tools("arm-linux-gnueabi-gcc", "dpkg-deb")
    cache = session_cache(tmp_path_factory) / "debs" / "bookworm-armel"
    debs = [next(iter(sorted(cache.glob(f"{name}_*.deb")))) for name in FROM_THE_BUILD]
    debs += [debian_deb(path) for path in FROM_THE_POOL]
    tree = tmp_path / "rootfs"
    for deb in debs:
        run("dpkg-deb", "-x", deb, tree)
    libraries = tree / "usr" / "lib" / "arm-linux-gnueabi"
    (tmp_path / "calls.c").write_text(LIBRARIES_PROGRAM)
    program = tree / "usr" / "bin" / "calls"
    program.parent.mkdir(parents=True, exist_ok=True)
    link = [f"-L{libraries}", "-l:libcrypto.so.3", "-l:libssl.so.3", "-l:libpixman-1.so.0", "-ldl"]
    run("arm-linux-gnueabi-gcc", "-O1", "-o", program, tmp_path / "calls.c", *link)
    ran = run_arm(program, sysroot=str(tree), env={"LD_LIBRARY_PATH": "/usr/lib/arm-linux-gnueabi"})
    assert (ran.returncode, ran.output) == (0, LIBRARIES_OUTPUT), "ground truth: it all runs on an ARM1176"
    report = gate(tree)
    assert report.ok, [(f.path, f.rule, f.message) for f in report.errors]
    assert "code" in next(o for o in report.objects if o.path.endswith("libcrypto.so.3")).checks
    assert {f.waiver for f in report.waived} >= {
        "runtime-dispatch (libgcc-unwind-vfp-d16-d31)",
        "runtime-dispatch (pixman-arm-neon)",
    }
