"""Code scan speed: scan_elf on Debian armel libcrypto.so.3 (about 2 MB of ARM code) against
`arm-linux-gnueabi-objdump -d` of the same file, in the same run. Goal: at most a tenth of
objdump's time. The package is downloaded once with a private apt configuration (the host's apt
state is never touched) and cached under .buildkit-cache/bench/codescan/."""

from __future__ import annotations

import subprocess
import time
from collections import Counter
from pathlib import Path

from elftools.elf.elffile import ELFFile

from buildkit.archgate.codescan import CodeRules, CodeScanResult, scan_elf
from buildkit.archgate.profile import load_profile

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".buildkit-cache" / "bench" / "codescan"
PACKAGE = "libssl3:armel"
LIBCRYPTO = "usr/lib/arm-linux-gnueabi/libcrypto.so.3"
MIRROR = "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main\n"
GOAL = 0.10


def apt_options(state: Path) -> list[str]:
    """apt-get options for armel packages with every list, cache and status file under `state`."""
    return [
        "-oAPT::Architecture=armel",
        "-oAPT::Architectures=armel",
        "-oAPT::Sandbox::User=root",
        f"-oDir::State::Lists={state / 'lists'}",
        f"-oDir::Cache={state / 'cache'}",
        f"-oDir::State::status={state / 'status'}",
        f"-oDir::Etc::SourceList={state / 'sources.list'}",
        f"-oDir::Etc::SourceParts={state / 'sources.list.d'}",
        "-qq",
    ]


def fetch_libcrypto() -> Path:
    target = CACHE / "root" / LIBCRYPTO
    if target.is_file():
        return target
    state = CACHE / "apt"
    for directory in (state / "lists" / "partial", state / "cache" / "archives" / "partial", state / "sources.list.d"):
        directory.mkdir(parents=True, exist_ok=True)
    (state / "status").touch()
    (state / "sources.list").write_text(MIRROR)
    options = apt_options(state)
    subprocess.run(["apt-get", *options, "update"], check=True, capture_output=True, timeout=600)
    subprocess.run(["apt-get", *options, "download", PACKAGE], cwd=CACHE, check=True, capture_output=True, timeout=600)
    (deb,) = CACHE.glob("libssl3_*_armel.deb")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(CACHE / "root")], check=True, timeout=120)
    return target


def pi1_rules() -> CodeRules:
    """The pi1 profile's [code] table with the runtime-dispatch rules, as the gate scans with."""
    return load_profile("pi1").code


def timed_scan(path: Path, rules: CodeRules) -> tuple[float, CodeScanResult]:
    start = time.perf_counter()
    with open(path, "rb") as fh:
        result = scan_elf(ELFFile(fh), rules)
    return time.perf_counter() - start, result


def timed_objdump(path: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["arm-linux-gnueabi-objdump", "-d", str(path)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def main() -> None:
    try:
        library = fetch_libcrypto()
    except (subprocess.SubprocessError, OSError, ValueError) as exc:
        print(f"codescan: skipped, cannot fetch {PACKAGE}: {exc}")
        return
    rules = pi1_rules()
    cold, result = timed_scan(library, rules)
    warm = min(timed_scan(library, rules)[0] for _ in range(3))
    objdump = timed_objdump(library)
    rules_found = ", ".join(f"{rule} {n}" for rule, n in sorted(Counter(h.rule for h in result.hits).items()))
    print(
        f"codescan: {library.name} from {PACKAGE}: {result.bytes_scanned / 1e6:.2f} MB of code, "
        f"{result.total_hits} hits ({rules_found or 'none'}), {sum(d.count for d in result.dispatched)} "
        f"runtime-dispatched, {result.undecoded_words} undecoded candidate words"
    )
    print(f"codescan: scan_elf {cold:.3f} s first call, {warm:.3f} s best of 3; objdump -d {objdump:.3f} s")
    print(f"codescan: ratio {cold / objdump:.3f} (first call) / {warm / objdump:.3f} (best); goal <= {GOAL:.2f}")


if __name__ == "__main__":
    main()
