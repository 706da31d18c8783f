"""Runtime-dispatch rules (verify/dispatch/*.toml), each run on an ARM1176: a program holding the
dispatched helper runs under `qemu-arm -cpu arm1176` (the CPU check picks the ARMv6 path), and the
gate reports the helper's instructions as `waived: runtime-dispatch (<rule>)`, by symbol and, once
stripped, by the helper's own bytes. The same instruction outside a dispatched helper still fails,
and SIGILLs there."""

from __future__ import annotations

import functools
import http.server
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from buildkit.archgate.coderules import load_dispatch_rules
from support import require_tools
from support.codescan import profile_rules, scan_file
from support.corpus import ARMEL_SYSROOT, debian_deb, pypi_wheel, run_arm, unpacked
from support.gate import gate, rules_of, run

pytestmark = pytest.mark.slow

CC = "arm-linux-gnueabi-gcc"
TESTED = {
    "libgcc-unwind-vfp-d16-d31",
    "musl-arm-atomics-v7",
    "pixman-arm-neon",
    "aws-lc-arm-neon",
    "aws-lc-arm-armv8-crypto",
    "ring-arm-neon",
}

# libgcc's EHABI unwinder, linked statically into an ARMv5 program: _Unwind_Backtrace walks the
# stack through the same unwinder that holds __gnu_Unwind_{Save,Restore}_VFP_D_16_to_31.
UNWIND_PROGRAM = r"""
#include <stdio.h>
#include <unwind.h>
static _Unwind_Reason_Code count(struct _Unwind_Context *context, void *frames) {
    (void)context;
    ++*(int *)frames;
    return _URC_NO_REASON;
}
__attribute__((noinline)) static int walk(void) { int frames = 0; _Unwind_Backtrace(count, &frames); return frames; }
int main(void) { printf("frames %s\n", walk() > 1 ? "ok" : "missing"); return 0; }
"""

# musl's ARM barrier and compare-and-swap helpers as src/thread/arm/atomics.s spells them (the
# ARMv6K/v7 instructions as .word), selected the way __set_thread_area.c does: by AT_PLATFORM.
MUSL_ATOMICS = r"""
	.text
	.arm
	.global __a_barrier_v6
	.type __a_barrier_v6,%function
__a_barrier_v6:
	.word 0xee070fba
	bx lr
	.global __a_barrier_v7
	.type __a_barrier_v7,%function
__a_barrier_v7:
	.word 0xf57ff05b
	bx lr
	.global __a_cas_v6
	.type __a_cas_v6,%function
__a_cas_v6:
	mov r3,r0
	.word 0xee070fba
1:	.word 0xe1920f9f
	subs r0,r3,r0
	.word 0x01820f91
	teqeq r0,#1
	beq 1b
	.word 0xee070fba
	bx lr
	.global __a_cas_v7
	.type __a_cas_v7,%function
__a_cas_v7:
	mov r3,r0
	.word 0xf57ff05b
1:	.word 0xe1920f9f
	subs r0,r3,r0
	.word 0x01820f91
	teqeq r0,#1
	beq 1b
	.word 0xf57ff05b
	bx lr
"""
MUSL_PROGRAM = r"""
#include <stdio.h>
#include <sys/auxv.h>
void __a_barrier_v6(void), __a_barrier_v7(void);
int __a_cas_v6(int old, int new, volatile int *p), __a_cas_v7(int old, int new, volatile int *p);
int main(void) {
    const char *platform = (const char *)getauxval(AT_PLATFORM);
    int v7 = platform && platform[0] == 'v' && platform[1] >= '7';
    void (*barrier)(void) = v7 ? __a_barrier_v7 : __a_barrier_v6;
    int (*cas)(int, int, volatile int *) = v7 ? __a_cas_v7 : __a_cas_v6;
    volatile int value = 5;
    int failed = cas(4, 9, &value), swapped = cas(5, 9, &value);
    barrier();
    printf("cas %d %d %d\n", failed != 0, swapped == 0, value);
    return 0;
}
"""

# pixman's public API, declared here (no -dev package): composite a premultiplied half-transparent
# red over opaque blue, add, and copy, on images large enough for the fast paths.
PIXMAN_PROGRAM = r"""
#include <stdint.h>
#include <stdio.h>
typedef struct pixman_image pixman_image_t;
pixman_image_t *pixman_image_create_bits(uint32_t format, int w, int h, uint32_t *bits, int stride);
void pixman_image_composite32(int op, pixman_image_t *src, pixman_image_t *mask, pixman_image_t *dest,
                              int32_t sx, int32_t sy, int32_t mx, int32_t my, int32_t dx, int32_t dy,
                              int32_t w, int32_t h);
enum { A8R8G8B8 = 0x20028888, SRC = 1, OVER = 3, ADD = 12, N = 64 };
static uint32_t src[N * N], dst[N * N];
int main(void) {
    for (int i = 0; i < N * N; i++) { src[i] = 0x80800000u; dst[i] = 0xff0000ffu; }
    pixman_image_t *s = pixman_image_create_bits(A8R8G8B8, N, N, src, N * 4);
    pixman_image_t *d = pixman_image_create_bits(A8R8G8B8, N, N, dst, N * 4);
    pixman_image_composite32(OVER, s, 0, d, 0, 0, 0, 0, 0, 0, N, N);
    uint32_t over = dst[N * N - 1];
    pixman_image_composite32(ADD, s, 0, d, 0, 0, 0, 0, 0, 0, N, N);
    uint32_t add = dst[N * N - 1];
    pixman_image_composite32(SRC, s, 0, d, 0, 0, 0, 0, 0, 0, N, N);
    printf("%08x %08x %08x\n", over, add, dst[0]);
    return 0;
}
"""
PIXMAN_OUTPUT = "ff80007f ffff007f 80800000"
PIXMAN_DEB = "p/pixman/libpixman-1-0_0.42.2-1_armel.deb"


def dispatched(report, rule: str) -> list:
    return [f for f in report.waived if f.waiver == f"runtime-dispatch ({rule})"]


def stripped_copies(binary: Path) -> dict[str, Path]:
    """The binary as built; with its function symbols but no mapping symbols ($a/$d: the scan then
    finds the helpers by name); stripped; and stripped of its build attributes too."""
    unmapped = binary.with_name(binary.name + ".unmapped")
    run("arm-linux-gnueabi-objcopy", "--wildcard", "--strip-symbol=$*", binary, unmapped)
    stripped = binary.with_name(binary.name + ".stripped")
    run("arm-linux-gnueabi-strip", "-o", stripped, binary)
    bare = binary.with_name(binary.name + ".bare")
    run("arm-linux-gnueabi-objcopy", "--remove-section", ".ARM.attributes", stripped, bare)
    return {"symbols": binary, "no-mapping": unmapped, "stripped": stripped, "stripped-no-attributes": bare}


def test_every_dispatch_rule_is_run_here():
    rules = load_dispatch_rules()
    assert {r.id for r in rules} == TESTED
    assert all("test_codescan_dispatch.py" in r.verified and r.source and r.reason for r in rules)


def test_libgcc_d16_d31_unwinder_helpers(tmp_path):
    require_tools(CC)
    (tmp_path / "unwind.c").write_text(UNWIND_PROGRAM)
    binary = tmp_path / "unwind"
    run(CC, "-static", "-O1", "-funwind-tables", "-o", binary, tmp_path / "unwind.c")
    for kind, variant in stripped_copies(binary).items():
        ran = run_arm(variant)
        assert (ran.returncode, ran.output) == (0, "frames ok\n"), kind
        report = gate(variant)
        assert report.ok, (kind, [(f.rule, f.message) for f in report.errors])
        [helpers] = dispatched(report, "libgcc-unwind-vfp-d16-d31")
        assert helpers.rule == "code.vfp_d32" and helpers.evidence["count"] == 2, kind
        assert "waived: runtime-dispatch (libgcc-unwind-vfp-d16-d31)" in helpers.message
        if kind in ("symbols", "no-mapping"):
            assert helpers.evidence["symbols"] == [
                "__gnu_Unwind_Restore_VFP_D_16_to_31",
                "__gnu_Unwind_Save_VFP_D_16_to_31",
            ]


def test_musl_atomics_selected_by_at_platform(tmp_path):
    require_tools(CC)
    (tmp_path / "atomics.s").write_text(MUSL_ATOMICS)
    (tmp_path / "main.c").write_text(MUSL_PROGRAM)
    binary = tmp_path / "musl-atomics"
    run(CC, "-static", "-O1", "-o", binary, tmp_path / "main.c", tmp_path / "atomics.s")
    for cpu in ("arm1176", "max"):  # the ARMv6 helpers there, the ARMv7 ones here: both give the answer
        ran = run_arm(binary, cpu=cpu)
        assert (ran.returncode, ran.output) == (0, "cas 1 1 9\n"), cpu
    for kind, variant in stripped_copies(binary).items():
        report = gate(variant)
        assert report.ok, (kind, [(f.rule, f.message) for f in report.errors])
        if kind == "symbols":  # musl writes these as .word: its $d mapping symbols say "data"
            assert not dispatched(report, "musl-arm-atomics-v7")
            continue
        [barriers] = dispatched(report, "musl-arm-atomics-v7")
        assert barriers.rule == "code.databarrier" and barriers.evidence["count"] == 3, kind
        if kind == "no-mapping":
            assert barriers.evidence["symbols"] == ["__a_barrier_v7", "__a_cas_v7"]


def test_pixman_neon_paths_in_debians_armel_library(tmp_path):
    require_tools(CC)
    deb = debian_deb(PIXMAN_DEB)
    library = unpacked(deb) / "usr" / "lib" / "arm-linux-gnueabi"
    (tmp_path / "composite.c").write_text(PIXMAN_PROGRAM)
    program = tmp_path / "composite"
    run(CC, "-O1", "-o", program, tmp_path / "composite.c", f"-L{library}", "-l:libpixman-1.so.0")
    for cpu in ("arm1176", "max"):
        ran = run_arm(program, cpu=cpu, sysroot=ARMEL_SYSROOT, env={"LD_LIBRARY_PATH": str(library)})
        assert (ran.returncode, ran.output) == (0, PIXMAN_OUTPUT + "\n"), cpu
    report = gate(deb)
    assert report.ok, [(f.rule, f.message) for f in report.errors]
    [neon] = dispatched(report, "pixman-arm-neon")
    assert neon.rule == "code.neon" and neon.evidence["count"] > 1000
    # the same code in a library of another name is not the one whose dispatcher we know
    [shared] = sorted(library.glob("libpixman-1.so.0.*"))
    assert scan_file(shared, profile_rules()).total_hits >= neon.evidence["count"]


@pytest.mark.parametrize(
    "instruction, rule",
    [("vldmia %0, {d16-d31}", "code.vfp_d32"), ("dmb ish", "code.databarrier")],
    ids=["d16-d31", "dmb"],
)
def test_the_same_instruction_outside_a_dispatched_helper_fails(tmp_path, instruction, rule):
    require_tools(CC)
    (tmp_path / "main.c").write_text(
        "static double buf[32];\n"
        f'int main(void) {{ __asm__ volatile(".fpu vfpv3\\n\\t{instruction}" :: "r"(buf) : "memory"); return 0; }}\n'
    )
    binary = tmp_path / "direct"
    run(CC, "-static", "-O1", "-march=armv7-a", "-marm", "-o", binary, tmp_path / "main.c")
    assert run_arm(binary).returncode != 0, "ground truth: SIGILL on an ARM1176"
    for kind, variant in stripped_copies(binary).items():
        report = gate(variant)
        assert rule in rules_of(report), kind


# uv's linux_armv6l wheel: a stripped static Rust program whose TLS is rustls on aws-lc-rs, with
# AWS-LC's NEON and ARMv8-crypto assembly chosen at run time by OPENSSL_armcap_P.
UV = "uv-0.13.9-py3-none-linux_armv6l.whl"
UV_PROGRAM = "uv-0.13.9.data/scripts/uv"
# TLS 1.3 as the server likes it, and TLS 1.2 with each AEAD, so that ChaCha20-Poly1305 and
# AES-GCM (with GHASH) both run, after an ECDHE key exchange and an ECDSA/SHA-256 certificate check.
TLS_SETTINGS = {
    "tls1.3": None,
    "chacha20-poly1305": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "aes128-gcm": "ECDHE-ECDSA-AES128-GCM-SHA256",
}
NO_SUCH_PROJECT = "there are no versions of demo"


def issue_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A test CA and a 127.0.0.1 server certificate it signed (ECDSA P-256): ca, cert, key."""
    ca, ca_key, cert, key, csr = (folder / n for n in ("ca.pem", "ca.key", "cert.pem", "key.pem", "leaf.csr"))
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    run("openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=buildkit test CA")
    run("openssl", "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1")
    (folder / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    sign = ("-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2", "-extfile", folder / "ext.cnf")
    run("openssl", "x509", "-req", "-in", csr, *sign, "-out", cert)  # X.509 v3: the extensions make it one
    return ca, cert, key


@contextmanager
def https_index(folder: Path, cert: Path, key: Path, ciphers: str | None) -> Iterator[tuple[str, list[str]]]:
    """A loopback HTTPS server of an empty package index: its URL and the request lines it served."""
    (folder / "www" / "simple" / "demo").mkdir(parents=True, exist_ok=True)
    (folder / "www" / "simple" / "demo" / "index.html").write_text("<html><body></body></html>\n")
    served: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            served.append(format % args)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    if ciphers:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        context.set_ciphers(ciphers)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=folder / "www"))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}/simple/", served
    finally:
        server.shutdown()
        server.server_close()


def test_aws_lc_neon_and_armv8_crypto_in_uv(tmp_path):
    require_tools("openssl")
    wheel = pypi_wheel(UV)
    program = unpacked(wheel) / UV_PROGRAM
    ca, cert, key = issue_certificates(tmp_path)
    (tmp_path / "req.in").write_text("demo\n")
    env = {"SSL_CERT_FILE": str(ca), "HOME": str(tmp_path), "UV_PYTHON_DOWNLOADS": "never"}
    compile_ = ("pip", "compile", "--no-config", "--no-cache", "--python-version", "3.11", "--python-platform", "linux")
    for setting, ciphers in TLS_SETTINGS.items():
        with https_index(tmp_path / setting, cert, key, ciphers) as (url, served):
            for cpu in ("arm1176", "max"):
                ran = run_arm(program, *compile_, "--index-url", url, str(tmp_path / "req.in"), cpu=cpu, env=env)
                # resolution fails only because the index is empty: the request went through TLS
                assert ran.returncode == 1 and NO_SUCH_PROJECT in ran.output, (setting, cpu, ran.output)
            assert sum("GET /simple/demo/" in line and " 200 " in line for line in served) == 2, served
    report = gate(wheel)
    assert report.ok, [(f.rule, f.message) for f in report.errors]
    neon, armv8 = dispatched(report, "aws-lc-arm-neon"), dispatched(report, "aws-lc-arm-armv8-crypto")
    assert {f.rule for f in neon} >= {"code.neon", "code.vfp_d32"} and {f.rule for f in armv8} >= {"code.crypto"}
    assert sum(f.evidence["count"] for f in neon + armv8) > 4000


# maturin's linux_armv6l wheel: rustls on ring 0.17.14 (with its symbols), trusting only its built-in
# roots: a handshake with the loopback server runs the key exchange and decrypts the server's
# certificate before it refuses the test CA.
MATURIN = "maturin-1.16.0-py3-none-linux_armv6l.whl"
MATURIN_PROGRAM = "maturin-1.16.0.data/scripts/maturin"
CERTIFICATE_REFUSED = "invalid peer certificate: UnknownIssuer"


def test_ring_neon_in_maturin(tmp_path):
    require_tools("openssl")
    wheel = pypi_wheel(MATURIN)
    program = unpacked(wheel) / MATURIN_PROGRAM
    _, cert, key = issue_certificates(tmp_path)
    upload = ("upload", "--non-interactive", "--skip-existing", "-u", "user", "-p", "secret")
    for setting, ciphers in TLS_SETTINGS.items():
        with https_index(tmp_path / setting, cert, key, ciphers) as (url, _):
            for cpu in ("arm1176", "max"):
                ran = run_arm(
                    program, *upload, "--repository-url", url, str(wheel), cpu=cpu, env={"HOME": str(tmp_path)}
                )
                assert ran.returncode == 1 and CERTIFICATE_REFUSED in ran.output, (setting, cpu, ran.output)
    report = gate(wheel)
    assert report.ok, [(f.rule, f.message) for f in report.errors]
    [neon] = [f for f in dispatched(report, "ring-arm-neon") if f.rule == "code.neon"]
    assert "ring_core_0_17_14__x25519_NEON" in neon.evidence["symbols"] and neon.evidence["count"] > 4000


def aws_lc_body(index: int) -> bytes:
    """The bytes of one of the aws-lc-arm-neon rule's whole-body signatures, as uv's binary holds them."""
    [rule] = [r for r in load_dispatch_rules() if r.id == "aws-lc-arm-neon"]
    signature = rule.signatures[index]
    data = (unpacked(pypi_wheel(UV)) / UV_PROGRAM).read_bytes()
    start = data.find(b"".join(int(w, 16).to_bytes(4, "little") for w in signature.words))
    return data[start : start + signature.length]


def test_aws_lc_neon_code_called_from_main_or_cut_short_fails(tmp_path):
    """ChaCha20_ctr32_neon's own first instructions, called from main with no CPU check: SIGILL on
    an ARM1176 and a violation, because a body counts only whole (its SHA-256)."""
    require_tools(CC)
    body = aws_lc_body(0)
    first_neon = next(i for i in range(0, len(body), 4) if body[i + 3] == 0xF4)  # vld1/vst1
    head = body[: first_neon + 4]
    words = ", ".join(f"0x{int.from_bytes(head[i : i + 4], 'little'):08x}" for i in range(0, len(head), 4))
    (tmp_path / "head.s").write_text(
        f".text\n.arm\n.global neon_head\n.type neon_head,%function\nneon_head:\n.inst {words}\n"
    )
    (tmp_path / "main.c").write_text("void neon_head(void);\nint main(void) { neon_head(); return 0; }\n")
    binary = tmp_path / "direct"
    run(CC, "-static", "-O1", "-o", binary, tmp_path / "main.c", tmp_path / "head.s")
    assert run_arm(binary).returncode != 0, "ground truth: SIGILL on an ARM1176"
    for kind, variant in stripped_copies(binary).items():
        report = gate(variant)
        assert not report.ok and not dispatched(report, "aws-lc-arm-neon"), kind
