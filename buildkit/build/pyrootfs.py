"""The Python path: a mini root filesystem for ARMv6 with the interpreter, its libraries and the app.

The base is Debian bookworm armel (ARMv5TE, soft-float): its code runs on the Pi 1's ARM1176.
Debian armhf is built for ARMv7 and is refused. Both backends assemble the same tree:

1. distro packages: `mmdebstrap --variant=extract --architectures=armel` (apt resolves the
   dependencies; nothing is executed; the .debs are kept in the buildkit cache);
2. pip requirements: wheels fetched by pip for the target (pure Python, or ARMv6 soft-float wheels
   that pass the arch gate), installed into /usr/lib/python3/dist-packages;
3. the app, copied to /app;
4. pruning of what a service never needs (docs, man pages, locales, tests, caches, codecs other
   than the Unicode and Western ones, glibc's iconv modules, interactive-only modules, dpkg and its
   state, files copied from the build host), then of the shared libraries nothing needs any more;
5. .pyc files compiled by the TARGET interpreter itself (`invalidation_mode=UNCHECKED_HASH`,
   PYTHONHASHSEED=0), running as an ARM1176; the standard library is shipped as bytecode only;
6. normalisation: empty mount points, modes, mtimes = SOURCE_DATE_EPOCH.

Only step 5 runs ARM code, and that is where the backends differ: `native` runs the interpreter
with qemu-arm-static -cpu arm1176 in a bubblewrap sandbox whose / is the rootfs (no daemon);
`docker` loads the tree as an arm/v5 image into any Docker-API engine and runs it in a container
(QEMU through binfmt_misc). Compiling with the target interpreter rather than the host's means the
bytecode is exactly what that interpreter would write, whatever Python runs buildkit.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Protocol

from buildkit.build import Backend, cache_root
from buildkit.errors import UserError
from buildkit.fsutil import source_date_epoch, tar_tree_deterministic
from buildkit.recipe import Recipe
from buildkit.toolchain import require_tool

# Bump when the assembly changes what ends up in the tree: it is part of the cache key.
ASSEMBLY_REVISION = "1"

DIST_PACKAGES = "usr/lib/python3/dist-packages"
APP_DIR = "app"
MOUNT_POINTS = ("dev", "proc", "run", "sys", "tmp")
ARM_STEP_TIMEOUT = 900.0


@dataclass(frozen=True)
class PythonVersion:
    major: int
    minor: int

    @property
    def xy(self) -> str:
        return f"{self.major}.{self.minor}"

    @property
    def stdlib(self) -> str:
        return f"usr/lib/python{self.xy}"

    @property
    def interpreter(self) -> str:
        return f"/usr/bin/python{self.xy}"


@dataclass(frozen=True)
class DebianBase:
    suite: str
    arch: str
    triplet: str
    python: PythonVersion  # the suite's python3: wheels are chosen for it before anything is extracted


BASES = {"debian-bookworm-armel": DebianBase("bookworm", "armel", "arm-linux-gnueabi", PythonVersion(3, 11))}

REFUSED_BASES = {
    "debian-bookworm-armhf": (
        "Debian armhf is built for ARMv7 (Thumb-2, VFPv3-D16) and dies with SIGILL on the Pi 1's "
        "ARM1176 (ARMv6); use base = \"debian-bookworm-armel\" (ARMv5TE soft-float, runs on ARMv6)"),
    "alpine-armhf": (
        "Alpine armhf is not implemented: its repositories are not reachable from the build machines; "
        "use base = \"debian-bookworm-armel\""),
}

# Platform tags of 32-bit ARM wheels. Only the ARMv6 one can be accepted (and only if its code
# passes the gate); the others are looked for only so that a refusal can name the wheel.
ARMV6_WHEEL_PLATFORMS = ("linux_armv6l",)
OTHER_ARM_WHEEL_PLATFORMS = ("linux_armv7l", "manylinux2014_armv7l", "manylinux_2_17_armv7l",
                             "manylinux_2_31_armv7l", "musllinux_1_1_armv7l", "musllinux_1_2_armv7l")
WHEEL_HINT = "use the distro package, or build it for ARMv6 in the docker backend"

# Relative to the rootfs. Host files mmdebstrap copies in (hostname, resolv.conf) and apt/dpkg
# state are not reproducible and mean nothing on the device.
PRUNED_TREES = (
    "etc/apt", "etc/cron.daily", "etc/fstab", "etc/hostname", "etc/logrotate.d", "etc/resolv.conf",
    "usr/bin/py3clean", "usr/bin/py3compile", "usr/bin/py3versions", "usr/share/python3",
    "usr/lib/binfmt.d", "usr/share/binfmts", "usr/share/readline",
    "usr/lib/locale", "usr/share/bug", "usr/share/doc", "usr/share/doc-base", "usr/share/info",
    "usr/share/lintian", "usr/share/locale", "usr/share/man",
    "var/cache", "var/lib/apt", "var/lib/dpkg", "var/log",
)
# python3-minimal depends on dpkg (for its maintainer scripts), and dpkg on tar: without the dpkg
# database neither has a use in a service, unless the recipe asked for them by name.
PACKAGE_MANAGER_FILES = {
    "dpkg": ("etc/alternatives", "etc/dpkg", "sbin/start-stop-daemon", "usr/bin/dpkg*", "usr/bin/update-alternatives",
             "usr/sbin/dpkg-fsys-usrunmess", "usr/share/dpkg", "usr/share/polkit-1"),
    "tar": ("bin/tar", "etc/rmt", "usr/sbin/rmt-tar", "usr/sbin/tarcat"),
}
# Relative to the stdlib directory: development tools, interactive-only, demo and legacy modules.
PRUNED_STDLIB = ("__hello__.py", "__phello__", "_pydecimal.py", "antigravity.py", "crypt.py", "curses", "doctest.py",
                 "ensurepip", "idlelib", "lib2to3", "pydoc_data", "this.py", "tkinter", "turtle.py",
                 "turtledemo", "venv")
PRUNED_TEST_DIRS = frozenset({"test", "tests", "idle_test"})
PRUNED_EXTENSIONS = re.compile(
    r"^(_test\w*|_ctypes_test|_xxtestfuzz|xxlimited\w*|_codecs_\w+|_multibytecodec|_curses\w*|readline|_dbm|nis"
    r"|ossaudiodev|audioop|_crypt)\.")
# Codecs kept: the Unicode ones, ASCII, Latin-1, CP1252, ISO-8859-15 and the bytes-to-bytes codecs.
KEPT_ENCODINGS = frozenset({
    "__init__", "aliases", "ascii", "base64_codec", "bz2_codec", "charmap", "cp1252", "hex_codec", "idna",
    "iso8859_1", "iso8859_15", "latin_1", "punycode", "quopri_codec", "raw_unicode_escape", "rot_13", "undefined",
    "unicode_escape", "utf_16", "utf_16_be", "utf_16_le", "utf_32", "utf_32_be", "utf_32_le", "utf_7", "utf_8",
    "utf_8_sig", "uu_codec", "zlib_codec",
})
# glibc's own libraries and what it dlopen()s (NSS modules, libgcc_s for thread cancellation): kept
# even when no DT_NEEDED names them.
DLOPENED_LIBRARIES = re.compile(
    r"^(ld-linux.*|lib(c|m|dl|pthread|rt|util|resolv|anl|nss_\w+|gcc_s)\.so(\.\d+)*)$")

# Sourceless .pyc files (legacy layout, beside where the .py was) for the standard library, whose
# sources would double its size; the app and its wheels keep theirs, with __pycache__.
COMPILE_SCRIPT = """\
import compileall, json, py_compile, sys
mode = py_compile.PycInvalidationMode.UNCHECKED_HASH
plan = json.loads(sys.argv[1])
ok = [compileall.compile_dir(d, quiet=1, force=True, workers=1, invalidation_mode=mode, legacy=legacy)
      for legacy, dirs in ((True, plan["sourceless"]), (False, plan["cached"])) for d in dirs]
sys.exit(0 if all(ok) else 1)
"""


class ArmRunner(Protocol):
    """Runs a program of the rootfs as an ARM1176, with the rootfs as `/`. Files the program
    creates under `outputs` (absolute paths inside the rootfs) end up in the rootfs on the host."""

    def run(self, rootfs: Path, argv: Sequence[str], env: dict[str, str], outputs: Sequence[str]) -> None: ...


@dataclass(frozen=True)
class Wheel:
    path: Path
    name: str
    version: str
    platform: str

    @property
    def pure(self) -> bool:
        return self.platform == "any"


def python_backend(recipe: Recipe) -> Backend:
    settings = recipe.python
    base = debian_base(settings.base, recipe)
    toolchain = {
        "assembly": ASSEMBLY_REVISION,
        "backend": settings.backend,
        "base": settings.base,
        "mirror": settings.mirror,
        "mmdebstrap": mmdebstrap_version(),
        "pip": importlib.metadata.version("pip"),
    }

    def assemble(dest: Path) -> None:
        runner = docker_runner() if settings.backend == "docker" else QemuSandbox()
        assemble_rootfs(recipe, base, dest, runner)

    return Backend(toolchain=toolchain, assemble=assemble)


def debian_base(name: str, recipe: Recipe) -> DebianBase:
    if name in REFUSED_BASES:
        raise UserError(f"{recipe.path}: python.base = {name!r} is refused: {REFUSED_BASES[name]}")
    return BASES[name]


def mmdebstrap_version() -> str:
    out = subprocess.run([str(require_tool("mmdebstrap")), "--version"], capture_output=True, text=True,
                         check=False).stdout.strip()
    return out.splitlines()[0] if out else "unknown"


def assemble_rootfs(recipe: Recipe, base: DebianBase, dest: Path, runner: ArmRunner) -> None:
    settings = recipe.python
    with fixed_umask(0o022), tempfile.TemporaryDirectory(prefix="buildkit-wheels-") as wheel_dir:
        wheels = fetch_wheels(settings.requirements, base, Path(wheel_dir), recipe) if settings.requirements else []
        extract_packages(recipe, base, dest)
        require_interpreter(dest, base, recipe)
        if wheels:
            install_wheels(wheels, base.python, dest)
        copy_app(recipe, dest / APP_DIR)
        prune_rootfs(dest, base.python, base, settings.packages)
        compile_bytecode(dest, base.python, runner)
        normalize_tree(dest, source_date_epoch())


@contextlib.contextmanager
def fixed_umask(mask: int) -> Iterator[None]:
    """The modes of what mmdebstrap, pip and the compiler create must not depend on the caller's umask."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


# 1. Distro packages ------------------------------------------------------------------------------

def deb_cache_dir(base: DebianBase) -> Path:
    path = cache_root() / "debs" / f"{base.suite}-{base.arch}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def extract_packages(recipe: Recipe, base: DebianBase, dest: Path) -> None:
    """mmdebstrap's extract variant; .debs already in the cache are not downloaded again."""
    settings = recipe.python
    mmdebstrap = require_tool("mmdebstrap")
    debs = deb_cache_dir(base)
    archives = "/var/cache/apt/archives/"
    dest.parent.mkdir(parents=True, exist_ok=True)
    argv = [str(mmdebstrap), "--variant=extract", f"--architectures={base.arch}",
            f"--include={','.join(settings.packages)}",
            "--skip=download/empty", "--skip=cleanup/apt/cache",
            f"--setup-hook=mkdir -p \"$1\"{archives}",
            f"--setup-hook=sync-in {debs} {archives}",
            base.suite, str(dest), settings.mirror]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False,
                          env={**os.environ, "LC_ALL": "C.UTF-8"})
    if proc.returncode != 0:
        raise mmdebstrap_error(proc.stdout + proc.stderr, recipe, base)
    keep_downloaded_debs(dest / archives.strip("/"), debs)


def mmdebstrap_error(output: str, recipe: Recipe, base: DebianBase) -> UserError:
    settings = recipe.python
    missing = re.search(r"Unable to locate package (\S+)", output) or re.search(
        r"Package '?([^' ]+)'? has no installation candidate", output)
    if missing:
        return UserError(f"{recipe.path}: python.packages: Debian {base.suite} {base.arch} has no package "
                         f"{missing.group(1)!r}: fix the name (see https://packages.debian.org/{base.suite}/)")
    if re.search(r"Could not (resolve|connect)|Failed to fetch|Temporary failure resolving|Connection "
                 r"(refused|timed out)|Unable to connect", output):
        return UserError(f"{recipe.path}: python.mirror: Debian mirror {settings.mirror} is unreachable: "
                         f"check the network or set python.mirror to a reachable Debian mirror")
    errors = [line for line in output.splitlines() if line.startswith("E:")]
    last = errors[-1] if errors else (output.strip().splitlines() or ["no output"])[-1]
    return UserError(f"{recipe.path}: python.packages: mmdebstrap could not extract "
                     f"{', '.join(settings.packages)}: {last}")


def keep_downloaded_debs(archives: Path, cache: Path) -> None:
    for deb in sorted(archives.glob("*.deb")):
        target = cache / deb.name
        if target.exists():
            deb.unlink()
        else:
            shutil.move(deb, target)


def require_interpreter(rootfs: Path, base: DebianBase, recipe: Recipe) -> None:
    if not (rootfs / base.python.interpreter.lstrip("/")).is_file():
        raise UserError(f"{recipe.path}: python.packages installs no {base.python.interpreter}: "
                        f"add \"python3-minimal\"")


# 2. Wheels ---------------------------------------------------------------------------------------

def fetch_wheels(requirements: Sequence[str], base: DebianBase, wheel_dir: Path, recipe: Recipe) -> list[Wheel]:
    """Download the requirements and their dependencies as wheels for the target, and vet each one.

    pip is asked for pure or ARMv6 wheels only (offered an armv7l one too, it would prefer it over a
    pure one). When that fails, what exists for other ARM platforms is fetched only to name it."""
    where = f"{recipe.path}: python.requirements"
    try:
        pip_download(requirements, base.python, ARMV6_WHEEL_PLATFORMS, wheel_dir, where)
    except UserError as missing:
        with tempfile.TemporaryDirectory(prefix="buildkit-other-wheels-") as other:
            try:
                pip_download(requirements, base.python, ARMV6_WHEEL_PLATFORMS + OTHER_ARM_WHEEL_PLATFORMS,
                             Path(other), where)
            except UserError:
                raise missing from None
            for wheel in wheels_in(Path(other)):
                check_wheel(wheel, base, recipe)
        raise
    refuse_source_distributions(wheel_dir, where)
    wheels = wheels_in(wheel_dir)
    for wheel in wheels:
        check_wheel(wheel, base, recipe)
    return wheels


def pip_download(requirements: Sequence[str], python: PythonVersion, platforms: Sequence[str], dest: Path,
                 where: str) -> None:
    pip(["download", "--dest", str(dest), *pip_target_options(python, platforms), "--", *requirements],
        where=where, what=f"downloading {', '.join(requirements)}")


def refuse_source_distributions(directory: Path, where: str) -> None:
    """pip saves a direct reference to an sdist even with --only-binary; building it would run its
    setup code and compiler on the host, for the host, so it is refused instead of silently dropped."""
    sources = sorted(p.name for p in directory.iterdir() if p.suffix != ".whl")
    if sources:
        raise UserError(f"{where}: {sources[0]} is a source distribution; buildkit installs only pure-Python "
                        "or ARMv6 soft-float wheels: use the distro package, or build the wheel for ARMv6 "
                        "(arm-linux-gnueabi) and reference the .whl")


def wheels_in(directory: Path) -> list[Wheel]:
    return [parse_wheel(p) for p in sorted(directory.glob("*.whl"))]


def install_wheels(wheels: Sequence[Wheel], python: PythonVersion, rootfs: Path) -> None:
    # By name from the download directory, not by file path: a path would leave a direct_url.json
    # naming a temporary directory in every .dist-info.
    pip(["install", "--target", str(rootfs / DIST_PACKAGES), "--no-index", "--find-links",
         str(wheels[0].path.parent), "--no-deps", "--no-compile", "--no-warn-script-location",
         *pip_target_options(python, ARMV6_WHEEL_PLATFORMS), "--", *(f"{w.name}=={w.version}" for w in wheels)],
        where=str(rootfs), what="installing the wheels")
    # Console scripts get the build host's interpreter in their #! line: useless on the device.
    shutil.rmtree(rootfs / DIST_PACKAGES / "bin", ignore_errors=True)


def pip_target_options(python: PythonVersion, platforms: Sequence[str]) -> list[str]:
    options = ["--only-binary=:all:", "--python-version", python.xy, "--implementation", "cp",
               "--abi", f"cp{python.major}{python.minor}", "--abi", "abi3", "--abi", "none"]
    for platform in platforms:
        options += ["--platform", platform]
    return options


def pip(args: list[str], where: str, what: str) -> None:
    env = {**os.environ, "PIP_CACHE_DIR": str(cache_root() / "pip"), "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "PYTHONHASHSEED": "0"}
    proc = subprocess.run([sys.executable, "-m", "pip", "--quiet", *args], capture_output=True, text=True,
                          env=env, check=False)
    if proc.returncode == 0:
        return
    output = proc.stdout + proc.stderr
    if no_match := re.search(r"No matching distribution found for (\S+)", output):
        raise UserError(f"{where}: no pure-Python or ARMv6 wheel of {no_match.group(1)} for the target's "
                        f"CPython: {WHEEL_HINT}")
    if re.search(r"NewConnectionError|Max retries exceeded|Network is unreachable|Temporary failure in name", output):
        raise UserError(f"{where}: the package index is unreachable while {what}: check the network "
                        f"or PIP_INDEX_URL / PIP_FIND_LINKS")
    errors = [line for line in output.splitlines() if line.startswith("ERROR:")]
    raise UserError(f"{where}: pip failed {what}: {(errors or output.strip().splitlines() or ['?'])[-1]}")


def parse_wheel(path: Path) -> Wheel:
    parts = path.name[:-len(".whl")].split("-")
    if len(parts) not in (5, 6):
        raise UserError(f"{path.name}: not a wheel file name (name-version-python-abi-platform.whl)")
    return Wheel(path, parts[0], parts[1], parts[-1])


def check_wheel(wheel: Wheel, base: DebianBase, recipe: Recipe) -> None:
    """Pure wheels pass. A binary wheel must be tagged ARMv6, hold extension modules the armel
    interpreter loads, and pass the arch gate."""
    if wheel.pure:
        return
    refuse = f"{recipe.path}: python.requirements: {wheel.path.name} is a binary wheel for {wheel.platform}"
    if wheel.platform not in ARMV6_WHEEL_PLATFORMS:
        raise UserError(f"{refuse}, which an ARM1176 ({base.arch}) cannot run: {WHEEL_HINT}")
    foreign = [n for n in wheel_extension_modules(wheel.path) if not loadable_extension(n, base)]
    if foreign:
        raise UserError(f"{refuse} but {foreign[0]} is not built for {base.triplet} (the soft-float ABI of "
                        f"Debian {base.arch}): {WHEEL_HINT}")
    from buildkit.archgate.gate import verify_artifacts
    report = verify_artifacts([wheel.path], profile=recipe.gate.profile, scan_code=True,
                              extra_waivers=recipe.gate.waivers)
    if not report.ok:
        first = report.errors[0]
        raise UserError(f"{refuse} but the arch gate refuses it ({first.path}: {first.rule}: {first.message}): "
                        f"{WHEEL_HINT}")


def wheel_extension_modules(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return sorted(n for n in zf.namelist() if re.search(r"\.cpython-[^/]*\.so$|\.abi3\.so$", n))


def loadable_extension(name: str, base: DebianBase) -> bool:
    return name.endswith(f"-{base.triplet}.so") or name.endswith(".abi3.so")


# 3. The app --------------------------------------------------------------------------------------

def copy_app(recipe: Recipe, dest: Path) -> None:
    """The recipe's source directory, without the recipe itself and without caches or VCS data."""
    def ignore(directory: str, names: list[str]) -> set[str]:
        ignored = {n for n in names if n in ("__pycache__", ".git", ".pytest_cache") or n.endswith(".pyc")}
        if Path(directory).resolve() == recipe.path.parent:
            ignored.add(recipe.path.name)
        return ignored

    shutil.copytree(recipe.source_dir, dest, symlinks=True, ignore=ignore)


# 4. Pruning --------------------------------------------------------------------------------------

def prune_rootfs(rootfs: Path, python: PythonVersion, base: DebianBase, requested: Sequence[str]) -> None:
    for rel in PRUNED_TREES + (f"usr/lib/{base.triplet}/gconv",):
        remove(rootfs / rel)
    for package, patterns in PACKAGE_MANAGER_FILES.items():
        if package not in requested:
            for pattern in patterns:
                for path in rootfs.glob(pattern):
                    remove(path)
    stdlib = rootfs / python.stdlib
    for rel in PRUNED_STDLIB:
        remove(stdlib / rel)
    for top in (stdlib, rootfs / DIST_PACKAGES, rootfs / APP_DIR):
        remove_caches_and_tests(top)
    for ext in (stdlib / "lib-dynload").glob("*.so"):
        if PRUNED_EXTENSIONS.match(ext.name):
            ext.unlink()
    for codec in (stdlib / "encodings").glob("*.py"):
        if codec.stem not in KEPT_ENCODINGS:
            codec.unlink()
    for name in os.listdir(rootfs / "dev"):
        remove(rootfs / "dev" / name)
    remove_unused_libraries(rootfs, base)


def remove_unused_libraries(rootfs: Path, base: DebianBase) -> None:
    """Delete the shared libraries that no remaining program or extension module needs (DT_NEEDED,
    transitively), so that pruning a module also prunes what it alone linked; then the plugins
    (files in subdirectories of the library directories) whose own libraries are gone."""
    lib_dirs = [d for d in (rootfs / "lib" / base.triplet, rootfs / "usr/lib" / base.triplet) if d.is_dir()]
    libraries = {p.name: p for d in lib_dirs for p in d.iterdir() if ".so" in p.name and not p.is_dir()}
    elves = elf_files(rootfs)
    roots = [p for p in elves if not any(d in p.parents for d in lib_dirs)]
    roots += [p for name, p in libraries.items() if DLOPENED_LIBRARIES.match(name)]
    kept = {p.resolve() for p in roots}
    pending = list(kept)
    while pending:
        for needed in dt_needed(pending.pop()):
            target = libraries.get(needed)
            if target is not None and target.resolve() not in kept:
                kept.add(target.resolve())
                pending.append(target.resolve())
    for path in libraries.values():
        if path.resolve() not in kept:
            path.unlink()
    plugins = [p for p in elves if p.parent not in lib_dirs and any(d in p.parents for d in lib_dirs)]
    for plugin in plugins:
        if not all(any((d / needed).exists() for d in lib_dirs) for needed in dt_needed(plugin)):
            plugin.unlink()
    for d in lib_dirs:
        remove_empty_dirs(d)


def remove_empty_dirs(top: Path) -> None:
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        if dirpath != str(top) and not os.listdir(dirpath):
            os.rmdir(dirpath)


def elf_files(root: Path) -> list[Path]:
    found = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink() and path.is_file():
                with open(path, "rb") as fh:
                    if fh.read(4) == b"\x7fELF":
                        found.append(path)
    return found


def dt_needed(path: Path) -> list[str]:
    from elftools.common.exceptions import ELFError
    from elftools.elf.dynamic import DynamicSection
    from elftools.elf.elffile import ELFFile

    try:
        with open(path, "rb") as fh:
            sections = ELFFile(fh).iter_sections()
            return [tag.needed for section in sections if isinstance(section, DynamicSection)
                    for tag in section.iter_tags("DT_NEEDED")]
    except (ELFError, OSError):
        return []  # not ours to judge: the arch gate reports ELF files that do not parse


def remove_caches_and_tests(top: Path) -> None:
    if not top.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [d for d in dirnames if d in PRUNED_TEST_DIRS or d == "__pycache__"]:
            shutil.rmtree(Path(dirpath) / name)
            dirnames.remove(name)
        for name in filenames:
            if name.endswith((".pyc", ".pyo")):
                (Path(dirpath) / name).unlink()


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# 5. Bytecode -------------------------------------------------------------------------------------

def compile_bytecode(rootfs: Path, python: PythonVersion, runner: ArmRunner) -> None:
    present = [d for d in ("/" + DIST_PACKAGES, "/" + APP_DIR) if (rootfs / d.lstrip("/")).is_dir()]
    plan = {"sourceless": ["/" + python.stdlib], "cached": present}
    # PYTHONHASHSEED fixes the order of frozenset constants in the marshalled code; without
    # PYTHONDONTWRITEBYTECODE the compiler's own imports would leave timestamp-based caches.
    env = {"PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin"}
    runner.run(rootfs, [python.interpreter, "-s", "-c", COMPILE_SCRIPT, json.dumps(plan)], env=env,
               outputs=["/" + python.stdlib, *present])
    drop_compiled_sources(rootfs / python.stdlib)


def drop_compiled_sources(top: Path) -> None:
    for dirpath, _, filenames in os.walk(top):
        for name in filenames:
            if name.endswith(".py") and name + "c" in filenames:
                (Path(dirpath) / name).unlink()


@dataclass(frozen=True)
class QemuSandbox:
    """The native runner: qemu-arm-static -cpu arm1176 inside bubblewrap, the rootfs bound read-write
    as `/`, so what the program writes lands in the tree directly."""

    timeout: float = ARM_STEP_TIMEOUT

    def run(self, rootfs: Path, argv: Sequence[str], env: dict[str, str], outputs: Sequence[str]) -> None:
        qemu = find_qemu_static()
        bwrap = require_tool("bwrap")
        for mount_point in MOUNT_POINTS:
            (rootfs / mount_point).mkdir(exist_ok=True)
        command = [str(bwrap), "--bind", str(rootfs), "/", "--proc", "/proc", "--dev", "/dev",
                   "--tmpfs", "/tmp", "--ro-bind", str(qemu), "/tmp/qemu-arm-static",
                   "--unshare-all", "--die-with-parent", "--clearenv"]
        for key, value in sorted(env.items()):
            command += ["--setenv", key, value]
        command += ["/tmp/qemu-arm-static", "-cpu", "arm1176", *argv]
        try:
            proc = subprocess.run(command, capture_output=True, text=True, timeout=self.timeout, check=False)
        except subprocess.TimeoutExpired:
            raise UserError(f"{argv[0]} under qemu-arm -cpu arm1176 did not finish in {self.timeout:.0f} s") from None
        if proc.returncode != 0:
            raise arm_step_error(argv, proc.returncode, proc.stdout + proc.stderr)


def find_qemu_static() -> Path:
    return require_tool("qemu-arm-static")


def arm_step_error(argv: Sequence[str], returncode: int, output: str) -> UserError:
    tail = " | ".join(line.strip() for line in output.strip().splitlines()[-4:]) or "no output"
    return UserError(f"{argv[0]} (as an ARM1176) failed with exit code {returncode} while compiling the "
                     f"Python code: {tail}")


# 6. Normalisation --------------------------------------------------------------------------------

def normalize_tree(rootfs: Path, epoch: int) -> None:
    """Mount points present and empty, app modes independent of the umask, every mtime = epoch."""
    for mount_point in MOUNT_POINTS:
        (rootfs / mount_point).mkdir(exist_ok=True)
    for dirpath, dirnames, filenames in os.walk(rootfs / APP_DIR):
        for name in dirnames:
            os.chmod(Path(dirpath) / name, 0o755)
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                os.chmod(path, 0o755 if os.stat(path).st_mode & 0o111 else 0o644)
    os.chmod(rootfs / APP_DIR, 0o755)
    os.chmod(rootfs / "tmp", 0o1777)
    for dirpath, dirnames, filenames in os.walk(rootfs, topdown=False):
        for name in filenames + dirnames:
            os.utime(Path(dirpath) / name, (epoch, epoch), follow_symlinks=False)
    os.utime(rootfs, (epoch, epoch))


# The docker backend ------------------------------------------------------------------------------

IMAGE_REPOSITORY = "buildkit-pyrootfs"
ENGINE_HINT = ("start a Docker-API engine (dockerd, or `podman system service`) and point DOCKER_HOST at it, "
               "or set python.backend = \"native\"")


def docker_runner() -> DockerRunner:
    """Connect to the engine of DOCKER_HOST (or the default socket) and check binfmt_misc first, so
    that a missing engine or QEMU handler is reported before anything is downloaded."""
    import docker
    from docker.errors import DockerException

    where = os.environ.get("DOCKER_HOST") or "the default socket (unix:///var/run/docker.sock)"
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except DockerException as exc:
        raise UserError(f"no Docker-API engine at {where} ({first_line(exc)}): {ENGINE_HINT}") from None
    check_binfmt_qemu_arm()
    return DockerRunner(client)


def check_binfmt_qemu_arm(binfmt_dir: Path | None = None) -> None:
    from buildkit.doctor import BINFMT_DIR, binfmt_status

    status = binfmt_status(binfmt_dir or BINFMT_DIR)
    if not status.enabled or "F" not in (status.flags or ""):
        raise UserError(
            "binfmt_misc has no enabled qemu-arm handler with the F flag, so the engine cannot run ARM "
            f"containers: as root run `{status.fix}` (apt-get install qemu-user-static binfmt-support)")


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


@dataclass(frozen=True)
class DockerRunner:
    """The docker runner: the tree becomes an arm/v5 image (a docker-archive, so that the platform is
    kept without a registry), the program runs in a container with an init (an emulated PID 1 hangs
    on SIGILL), QEMU_CPU=arm1176, no network and a timeout; the files it creates under `outputs` are
    copied back into the tree."""

    client: object
    timeout: float = ARM_STEP_TIMEOUT

    def run(self, rootfs: Path, argv: Sequence[str], env: dict[str, str], outputs: Sequence[str]) -> None:
        from docker.errors import DockerException
        from requests.exceptions import RequestException

        image = load_rootfs_image(self.client, rootfs)
        container = None
        try:
            container = self.client.containers.create(
                image, command=list(argv), environment={**env, "QEMU_CPU": "arm1176"}, init=True,
                network_mode="none", platform="linux/arm/v5", working_dir="/")
            container.start()
            try:
                status = container.wait(timeout=self.timeout)
            except RequestException:
                raise UserError(f"{argv[0]} in the ARM container did not finish in {self.timeout:.0f} s") from None
            if status.get("StatusCode") != 0:
                raise arm_step_error(argv, status.get("StatusCode"), container.logs().decode(errors="replace"))
            for output in outputs:
                copy_new_files_out(container, output, rootfs)
        except DockerException as exc:
            raise UserError(f"the Docker-API engine failed: {first_line(exc)}: {ENGINE_HINT}") from None
        finally:
            if container is not None:
                container.remove(force=True)
            self.client.images.remove(image, force=True, noprune=False)


def load_rootfs_image(client, rootfs: Path) -> str:
    layer = tar_tree_deterministic(rootfs, source_date_epoch(), fmt=tarfile.PAX_FORMAT)
    tag = f"{IMAGE_REPOSITORY}:{hashlib.sha256(layer).hexdigest()[:16]}"
    client.images.load(docker_archive(layer, tag))
    return tag


def docker_archive(layer: bytes, tag: str) -> bytes:
    """A `docker save` archive of one layer whose config says linux/arm/v5."""
    layer_id = hashlib.sha256(layer).hexdigest()
    config = json.dumps({
        "architecture": "arm", "variant": "v5", "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Cmd": ["/usr/bin/python3"]},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_id}"]},
    }, sort_keys=True).encode()
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [tag], "Layers": [f"{layer_id}/layer.tar"]}]).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in ((config_name, config), (f"{layer_id}/layer.tar", layer), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def copy_new_files_out(container, output: str, rootfs: Path) -> None:
    """Bring back the regular files and directories the step added under `output`; what was already
    in the tree is left as it is."""
    stream, _ = container.get_archive(output)
    with tempfile.TemporaryFile() as spool:
        for chunk in stream:
            spool.write(chunk)
        spool.seek(0)
        parent = rootfs / PurePosixPath(output).parent.relative_to("/")
        inside = rootfs.resolve()
        with tarfile.open(fileobj=spool, mode="r:") as tar:
            for member in tar:
                target = parent / member.name
                if ".." in PurePosixPath(member.name).parts or member.name.startswith("/") or \
                        not target.parent.resolve().is_relative_to(inside):
                    raise UserError(f"the ARM container returned an unsafe path {member.name!r}")
                if target.exists() or target.is_symlink():
                    continue
                if member.isdir():
                    target.mkdir(mode=0o755)
                elif member.isreg():
                    with tar.extractfile(member) as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    os.chmod(target, member.mode & 0o755)
