"""The Python path: a mini root filesystem for ARMv6 with the interpreter, its libraries and the app.

The base is Debian bookworm armel (ARMv5TE, soft-float): its code runs on the Pi 1's ARM1176.
Debian armhf is built for ARMv7 and is refused. Both backends assemble the same tree:

1. distro packages: `mmdebstrap --variant=extract --architectures=armel` (apt resolves the
   dependencies; nothing is executed; the .debs are kept in the buildkit cache; its extract hook
   names the .debs it unpacked, recorded with the installed wheels in components.json for the SBOM);
2. pip requirements: wheels fetched by pip for the target (pure Python, or ARMv6 soft-float wheels
   that pass the arch gate), installed into /usr/lib/python3/dist-packages; a distribution that a
   Debian package of step 1 already installed there satisfies its requirement, also transitively;
3. the app, copied to /app;
4. pruning of what a service never needs (docs, man pages, locales, tests, caches, codecs other
   than the Unicode and Western ones, glibc's iconv modules, interactive-only modules, dpkg and its
   state, files copied from the build host), then of the shared libraries nothing needs any more;
5. .pyc files (`invalidation_mode=UNCHECKED_HASH`, PYTHONHASHSEED=0); the standard library is
   shipped as bytecode only;
6. normalisation: empty mount points, modes, mtimes = SOURCE_DATE_EPOCH.

`native` (the default) runs no ARM code and needs no daemon: it refuses source distributions and
compiles the bytecode with a host CPython of the target's X.Y, which writes the same bytes as the
target interpreter. `docker` runs what needs ARM code in an ARM container of any Docker-API engine
(QEMU through binfmt_misc, as an ARM1176; see armcontainer.py): it builds the requirements that
exist only as source distributions into ARMv6 wheels, with Debian armel's compiler, and compiles
the bytecode with the target interpreter itself.
"""

from __future__ import annotations

import contextlib
import fnmatch
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from buildkit.archgate.closure import link_facts
from buildkit.archgate.elfcheck import ElfParseError, open_elf
from buildkit.build.armcontainer import docker_runner
from buildkit.build.base import COMPONENTS_FILE, Backend
from buildkit.errors import UserError
from buildkit.fsutil import sha256_file, write_bytes_atomic
from buildkit.progress import step
from buildkit.resources import VERIFY_DIR
from buildkit.schema import Invalid, Where, from_table, read_toml
from buildkit.source import SKIPPED_NAMES, copy_source
from buildkit.target import Target, Userland
from buildkit.toolchain import require_tool
from buildkit.walk import ELF_MAGIC, open_artifact

if TYPE_CHECKING:
    from packaging.requirements import Requirement

    from buildkit.context import BuildContext
    from buildkit.recipe import Recipe

# Bump when the assembly changes what ends up in the tree: it is part of the cache key.
ASSEMBLY_REVISION = "4"

DIST_PACKAGES = "usr/lib/python3/dist-packages"
APP_DIR = "app"
MOUNT_POINTS = ("dev", "proc", "run", "sys", "tmp")


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
    """The target's userland as this build uses it: where its .debs and pip's downloads are cached,
    and the SOURCE_DATE_EPOCH its files are stamped with."""

    distro: str
    suite: str
    arch: str
    triplet: str
    python: PythonVersion  # the suite's python3: wheels are chosen for it before anything is extracted
    build_packages: tuple[str, ...]  # what building a C extension from source needs, besides the recipe's
    platform: str  # the image platform of an ARM container of this userland
    wheel_platforms: tuple[str, ...]  # the binary wheels the target may take
    cache: Path
    epoch: int

    @classmethod
    def of(cls, target: Target, userland: Userland, cache: Path, epoch: int) -> DebianBase:
        major, minor = (int(n) for n in userland.python.split("."))
        return cls(
            userland.distro,
            userland.suite,
            userland.arch,
            userland.triplet,
            PythonVersion(major, minor),
            userland.build_packages,
            userland.oci_platform,
            target.wheel_platforms,
            cache,
            epoch,
        )

    @property
    def other_wheel_platforms(self) -> tuple[str, ...]:
        return tuple(p for p in ARM_WHEEL_PLATFORMS if p not in self.wheel_platforms)


@dataclass(frozen=True)
class Settings:
    """The recipe's [python] table."""

    base: str = ""  # a userland of the target's profile; "" is the profile's default
    backend: Literal["native", "docker"] = "native"
    packages: tuple[str, ...] = ("python3-minimal",)
    requirements: tuple[str, ...] = ()
    # Debian packages the docker backend adds to the ARM container that builds source distributions
    # (headers, libraries, build tools such as cython3); they never reach the payload.
    build_packages: tuple[str, ...] = ()
    mirror: str = "http://deb.debian.org/debian"

    def validate(self) -> None:
        if self.backend == "native" and self.build_packages:
            raise Invalid(
                "build_packages",
                "only for building source distributions, which only the docker backend "
                'does: set python.backend = "docker" or remove build_packages',
            )


def check(recipe: Recipe, where: Where) -> None:
    """The userland must be one the target's profile offers."""
    recipe.target.userland_named(recipe.settings.base, where.child("base"))


PRUNE_POLICY_FILE = VERIFY_DIR / "python" / "prune.toml"


@dataclass(frozen=True)
class StdlibPruning:
    removed: tuple[str, ...]  # relative to the standard library's directory
    test_dirs: frozenset[str]
    extensions: tuple[str, ...]  # globs of lib-dynload module names
    kept_encodings: frozenset[str]


@dataclass(frozen=True)
class LibraryPruning:
    dlopened: tuple[str, ...]  # globs of library names kept whatever names them


@dataclass(frozen=True)
class PrunePolicy:
    """What the python kind removes from the userland it assembles (verify/python/prune.toml)."""

    trees: tuple[str, ...]
    package_manager_files: dict[str, tuple[str, ...]]
    stdlib: StdlibPruning
    libraries: LibraryPruning

    def pruned_extension(self, filename: str) -> bool:
        module = filename.split(".", 1)[0]
        return any(fnmatch.fnmatchcase(module, pattern) for pattern in self.stdlib.extensions)

    def dlopened(self, library: str) -> bool:
        return any(fnmatch.fnmatchcase(library, pattern) for pattern in self.libraries.dlopened)


def prune_policy(path: Path = PRUNE_POLICY_FILE) -> PrunePolicy:
    return from_table(PrunePolicy, read_toml(path), Where(path))


# Platform tags of 32-bit ARM wheels. Only the target's own (Target.wheel_platforms) can be
# accepted, and only if their code passes the gate; the others are looked for only so that a
# refusal can name the wheel.
ARM_WHEEL_PLATFORMS = (
    "linux_armv6l",
    "linux_armv7l",
    "manylinux2014_armv7l",
    "manylinux_2_17_armv7l",
    "manylinux_2_31_armv7l",
    "musllinux_1_1_armv7l",
    "musllinux_1_2_armv7l",
)
WHEEL_HINT = 'use the distro package, or set python.backend = "docker" to build it for the target from source'

# Sourceless .pyc files (legacy layout, beside where the .py was) for the standard library, whose
# sources would double its size; the app and its wheels keep theirs, with __pycache__.
COMPILE_SCRIPT = """\
import importlib.util, json, os, py_compile, sys
plan = json.loads(sys.argv[1])
root = plan["root"]

def within_root(path):
    # The file `path` names once symlinks are followed with `root` as /: never the host's own files.
    for _ in range(40):
        if not os.path.islink(path):
            return path
        target = os.readlink(path)
        path = os.path.normpath(os.path.join(root if target.startswith("/") else os.path.dirname(path),
                                             target.lstrip("/")))
        if os.path.commonpath([path, root]) != root:
            sys.exit(f"{path}: a symlink leads out of the tree")
    sys.exit(f"{path}: symlink loop")

for legacy, tops in ((True, plan["sourceless"]), (False, plan["cached"])):
    for top in tops:
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, top.lstrip("/"))):
            dirnames.sort()
            for name in sorted(n for n in filenames if n.endswith(".py")):
                path = os.path.join(dirpath, name)
                cfile = path + "c" if legacy else importlib.util.cache_from_source(path)
                py_compile.compile(within_root(path), cfile=cfile, dfile="/" + os.path.relpath(path, root),
                                   doraise=True, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
"""


class ArmRunner(Protocol):
    """Runs a program of a tree as an ARM1176, with the tree as `/` (the docker backend's container).
    Files the program creates under `outputs` (absolute paths inside the tree) end up in the tree on
    the host; `what` says what the step is for, in errors."""

    def run(
        self, rootfs: Path, argv: Sequence[str], env: dict[str, str], outputs: Sequence[str], what: str
    ) -> None: ...


@dataclass(frozen=True)
class Wheel:
    path: Path
    name: str
    version: str
    platform: str

    @property
    def pure(self) -> bool:
        return self.platform == "any"


def backend(ctx: BuildContext) -> Backend:
    recipe, settings = ctx.recipe, ctx.recipe.settings
    userland = recipe.target.userland_named(settings.base, Where(recipe.path, "python.base"))
    base = DebianBase.of(recipe.target, userland, ctx.cache_dir, ctx.epoch)
    toolchain = {
        "assembly": ASSEMBLY_REVISION,
        "pruning": sha256_file(PRUNE_POLICY_FILE),
        "backend": settings.backend,
        "base": f"{userland.distro}-{userland.suite}-{userland.arch}",
        "mirror": settings.mirror,
        "mmdebstrap": mmdebstrap_version(),
        "pip": importlib.metadata.version("pip"),
    }
    if settings.backend == "native":
        toolchain["bytecode"] = f"CPython {find_host_python(base.python, recipe).version}"

    def assemble(dest: Path) -> None:
        runner = (
            docker_runner(base.platform, recipe.target.qemu_cpu, base.epoch) if settings.backend == "docker" else None
        )
        components = assemble_rootfs(recipe, base, dest, runner)
        write_bytes_atomic(dest.parent / COMPONENTS_FILE, components.to_json())

    return Backend(toolchain=toolchain, assemble=assemble)


def mmdebstrap_version() -> str:
    out = subprocess.run(
        [str(require_tool("mmdebstrap")), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return out.splitlines()[0] if out else "unknown"


def assemble_rootfs(recipe: Recipe, base: DebianBase, dest: Path, runner: ArmRunner | None) -> RootfsComponents:
    """`runner` is the ARM container of the docker backend; None is the native backend, which runs
    no ARM code: it refuses source distributions and compiles the bytecode with a host CPython of
    the target's version. Returns what went into the tree, for the SBOM (pruning removes the
    package database it would otherwise be read from)."""
    settings = recipe.settings
    wheels: list[Wheel] = []
    with fixed_umask(0o022), tempfile.TemporaryDirectory(prefix="buildkit-wheels-") as work:
        debs = extract_packages(settings.packages, recipe, base, dest, keep_index=bool(settings.requirements))
        require_interpreter(dest, base, recipe)
        if settings.requirements:
            debian = DebianDistributions.installed_in(dest)
            wheels = fetch_wheels(settings.requirements, base, Path(work), recipe, runner, debian)
            if wheels:
                install_wheels(wheels, base, dest)
        installed_wheels = tuple(sorted(InstalledWheel.of(w) for w in wheels))
        copy_app(recipe, dest / APP_DIR)
        prune_rootfs(dest, base, settings.packages, prune_policy())
        with step("compiling the Python bytecode"):
            compile_bytecode(dest, base.python, recipe, runner)
        normalize_tree(dest, base.epoch)
    return RootfsComponents(base.distro, base.suite, debs, installed_wheels)


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
    path = base.cache / "debs" / f"{base.suite}-{base.arch}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def extract_packages(
    packages: Sequence[str],
    recipe: Recipe,
    base: DebianBase,
    dest: Path,
    field: str = "python.packages",
    keep_index: bool = False,
) -> tuple[ExtractedDeb, ...]:
    """mmdebstrap's extract variant; .debs already in the cache are not downloaded again. `field`
    is the recipe key an error names; `keep_index` leaves apt's package lists in dest's
    var/lib/apt/lists (pruning removes them), where a refused requirement's Debian package is looked up.
    Returns the packages extracted, as mmdebstrap's extract hook names them (MMDEBSTRAP_ESSENTIAL:
    exactly the .debs it unpacked; the archives directory may hold others from the cache)."""
    mmdebstrap = require_tool("mmdebstrap")
    debs = deb_cache_dir(base)
    archives = "/var/cache/apt/archives/"
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=".extracted-", suffix=".txt", dir=dest.parent)
    os.close(fd)
    extracted_list = Path(name)  # outside the rootfs: nothing of it reaches the payload
    argv = [
        str(mmdebstrap),
        "--variant=extract",
        f"--architectures={base.arch}",
        f"--include={','.join(packages)}",
        "--skip=download/empty",
        "--skip=cleanup/apt/cache",
        *(["--skip=cleanup/apt/lists"] if keep_index else []),
        f'--setup-hook=mkdir -p "$1"{archives}',
        f"--setup-hook=sync-in {debs} {archives}",
        f"--extract-hook=printf '%s\\n' $MMDEBSTRAP_ESSENTIAL > {shlex.quote(str(extracted_list))}",
        base.suite,
        str(dest),
        recipe.settings.mirror,
    ]
    try:
        with step(f"extracting Debian {base.suite} {base.arch} packages (mmdebstrap)"):
            proc = subprocess.run(
                argv, capture_output=True, text=True, check=False, env={**os.environ, "LC_ALL": "C.UTF-8"}
            )
        if proc.returncode != 0:
            raise mmdebstrap_error(proc.stdout + proc.stderr, packages, recipe, base, field)
        listed = extracted_list.read_text().split()
    finally:
        extracted_list.unlink(missing_ok=True)
    extracted = tuple(sorted(extracted_deb(dest / path.lstrip("/")) for path in listed))
    keep_downloaded_debs(dest / archives.strip("/"), debs)
    return extracted


DEB_FIELDS = ("Package", "Version", "Architecture", "source:Package", "source:Version")


def extracted_deb(deb: Path) -> ExtractedDeb:
    """What a .deb says it is (dpkg-deb's control fields), and its sha256."""
    showformat = "\t".join(f"${{{name}}}" for name in DEB_FIELDS)
    proc = subprocess.run(
        [str(require_tool("dpkg-deb")), f"--showformat={showformat}", "--show", str(deb)],
        capture_output=True,
        text=True,
        check=False,
    )
    values = proc.stdout.split("\t")
    if proc.returncode != 0 or len(values) != len(DEB_FIELDS):
        raise UserError(f"{deb.name}: dpkg-deb cannot read the package mmdebstrap extracted: {proc.stderr.strip()}")
    name, version, arch, source, source_version = values
    return ExtractedDeb(name, version, arch, source, source_version, deb.name, sha256_file(deb))


def mmdebstrap_error(output: str, packages: Sequence[str], recipe: Recipe, base: DebianBase, field: str) -> UserError:
    missing = re.search(r"Unable to locate package (\S+)", output) or re.search(
        r"Package '?([^' ]+)'? has no installation candidate", output
    )
    if missing:
        return UserError(
            f"{recipe.path}: {field}: Debian {base.suite} {base.arch} has no package "
            f"{missing.group(1)!r}: fix the name (see https://packages.debian.org/{base.suite}/)"
        )
    if re.search(
        r"Could not (resolve|connect)|Failed to fetch|Temporary failure resolving|Connection "
        r"(refused|timed out)|Unable to connect",
        output,
    ):
        return UserError(
            f"{recipe.path}: python.mirror: Debian mirror {recipe.settings.mirror} is unreachable: "
            f"check the network or set python.mirror to a reachable Debian mirror"
        )
    errors = [line for line in output.splitlines() if line.startswith("E:")]
    last = errors[-1] if errors else (output.strip().splitlines() or ["no output"])[-1]
    return UserError(f"{recipe.path}: {field}: mmdebstrap could not extract {', '.join(packages)}: {last}")


def keep_downloaded_debs(archives: Path, cache: Path) -> None:
    for deb in sorted(archives.glob("*.deb")):
        target = cache / deb.name
        if target.exists():
            deb.unlink()
        else:
            shutil.move(deb, target)


@dataclass(frozen=True, order=True)
class ExtractedDeb:
    package: str
    version: str
    architecture: str
    source: str
    source_version: str
    file: str  # the .deb's file name
    sha256: str


@dataclass(frozen=True, order=True)
class InstalledWheel:
    name: str  # normalised (PEP 503)
    version: str
    file: str
    sha256: str

    @classmethod
    def of(cls, wheel: Wheel) -> InstalledWheel:
        from packaging.utils import canonicalize_name

        return cls(canonicalize_name(wheel.name), wheel.version, wheel.path.name, sha256_file(wheel.path))


@dataclass(frozen=True)
class RootfsComponents:
    """The third-party components of a Python rootfs (build.base.COMPONENTS_FILE)."""

    distro: str
    suite: str
    debs: tuple[ExtractedDeb, ...]
    wheels: tuple[InstalledWheel, ...]

    def to_json(self) -> bytes:
        table = {
            "debian": {"distro": self.distro, "suite": self.suite, "packages": [asdict(d) for d in self.debs]},
            "wheels": [asdict(w) for w in self.wheels],
        }
        return json.dumps(table, indent=2, sort_keys=True).encode() + b"\n"


def require_interpreter(rootfs: Path, base: DebianBase, recipe: Recipe) -> None:
    if not (rootfs / base.python.interpreter.lstrip("/")).is_file():
        raise UserError(f'{recipe.path}: python.packages installs no {base.python.interpreter}: add "python3-minimal"')


# 2. Wheels ---------------------------------------------------------------------------------------


class MissingWheel(UserError):
    """pip found nothing it may install for `requirement`."""

    def __init__(self, message: str, requirement: str) -> None:
        super().__init__(message)
        self.requirement = requirement


def fetch_wheels(
    requirements: Sequence[str],
    base: DebianBase,
    work: Path,
    recipe: Recipe,
    runner: ArmRunner | None,
    debian: DebianDistributions | None = None,
) -> list[Wheel]:
    """Download the requirements and their dependencies as wheels for the target, and vet each one;
    what the Debian packages already installed (`debian`) counts as installed and is not fetched.

    pip is asked for pure or ARMv6 wheels only (offered an armv7l one too, it would prefer it over a
    pure one). What exists only as a source distribution is built into an ARMv6 wheel in the ARM
    container of the docker backend (`runner`), and the requirements are resolved again with the
    built wheels on offer, so that their own dependencies are fetched too. The native backend
    refuses source distributions, naming any wheel for another ARM platform that pip passed over."""
    where = f"{recipe.path}: python.requirements"
    debian = debian or DebianDistributions()
    download, built = work / "download", work / "built"
    built.mkdir(parents=True, exist_ok=True)
    constraints = debian.as_installed(work / "debian")
    wanted, built_names = list(requirements), set[str]()
    while True:
        remove(download)
        try:
            with step(f"downloading wheels for {', '.join(wanted)} (pip)"):
                pip_download(
                    wanted,
                    base,
                    base.wheel_platforms,
                    download,
                    where,
                    links=(built, constraints.parent),
                    constraints=constraints,
                )
        except MissingWheel as missing:
            if runner is None:
                raise refuse_missing_wheel(missing, requirements, base, recipe, debian, work) from None
            sources = [download_source(missing.requirement, base, work, where)]
        else:
            sources = sorted(p for p in download.iterdir() if p.suffix != ".whl")
            if not sources:
                break
            if runner is None:
                raise source_refused(sources[0].name, where)
        fresh = build_wheels_from_source(sources, built_names, runner, recipe, base, built)
        wanted = [pin_built_requirement(r, fresh) for r in wanted]
    # Debian's distributions come back as their placeholders: the tree has them already.
    wheels = [w for w in wheels_in(download) if distribution_name(w.path.name) not in debian.versions]
    for wheel in wheels:
        check_wheel(wheel, base, recipe)
    return wheels


def pip_download(
    requirements: Sequence[str],
    base: DebianBase,
    platforms: Sequence[str],
    dest: Path,
    where: str,
    links: Sequence[Path] = (),
    constraints: Path | None = None,
    deps: bool = True,
) -> None:
    options = [*(["--constraint", str(constraints)] if constraints else []), *([] if deps else ["--no-deps"])]
    pip(
        ["download", "--dest", str(dest), *options, *pip_target_options(base.python, platforms), "--", *requirements],
        where=where,
        what=f"downloading {', '.join(requirements)}",
        links=links,
        cache=base.cache,
    )


# What Debian provides ---------------------------------------------------------------------------

DEBIAN_LOCAL_VERSION = "debian"  # `2.1.2+debian`: a version no index has, equal to 2.1.2 for every specifier


@dataclass(frozen=True)
class DebianDistributions:
    """The Python distributions the extracted Debian packages installed (their .dist-info or
    .egg-info in dist-packages), by normalised name; and apt's package index of that extraction,
    where the Debian package of a refused requirement is looked up."""

    installed: tuple[tuple[str, str], ...] = ()  # (name, version)
    index_dir: Path | None = None

    @classmethod
    def installed_in(cls, rootfs: Path) -> DebianDistributions:
        from packaging.utils import canonicalize_name

        found = {}
        for metadata in distribution_metadata_files(rootfs / DIST_PACKAGES):
            headers = parse_metadata(metadata)
            if headers.get("Name") and valid_version(headers.get("Version", "")):
                found[canonicalize_name(headers["Name"])] = headers["Version"]
        return cls(tuple(sorted(found.items())), rootfs / "var/lib/apt/lists")

    @property
    def versions(self) -> dict[str, str]:
        return dict(self.installed)

    def as_installed(self, directory: Path) -> Path:
        """A constraints file pinning each distribution to a placeholder wheel in `directory`
        (same name and version, no dependencies: apt resolved Debian's own): pip's resolver then
        takes what Debian installed as satisfying every requirement on it, transitively, and
        refuses a requirement its version does not meet."""
        directory.mkdir(parents=True, exist_ok=True)
        lines = []
        for name, version in self.installed:
            pinned = f"{version}+{DEBIAN_LOCAL_VERSION}"
            placeholder_wheel(directory, name, pinned)
            lines.append(f"{name}=={pinned}\n")
        constraints = directory / "constraints.txt"
        constraints.write_text("".join(lines))
        return constraints

    def package_for(self, name: str) -> DebianPackage | None:
        """The Debian package that would provide distribution `name`, found by Debian's naming
        (python3-NAME, without a py/python- prefix) or a Provides: in the extraction's package index."""
        if self.index_dir is None:
            return None
        candidates = dict.fromkeys(
            f"python3-{n}" for n in (name, name.removeprefix("python-"), name.removeprefix("py")) if n
        )
        for index in sorted(self.index_dir.glob("*_Packages")):
            text = index.read_text(errors="replace")
            for candidate in candidates:
                if found := find_debian_package(text, candidate):
                    return found
        return None


@dataclass(frozen=True)
class DebianPackage:
    name: str
    version: str  # Debian's: epoch, upstream version, revision

    @property
    def upstream_version(self) -> str:
        upstream = re.sub(r"^\d+:", "", self.version).rsplit("-", 1)[0]
        return re.split(r"[+~]", upstream)[0]


def find_debian_package(index: str, name: str) -> DebianPackage | None:
    """The stanza of package `name` in a Packages index, or of one that Provides: it."""
    stanza = re.search(rf"^Package: {re.escape(name)}\n", index, re.MULTILINE)
    if stanza is None:
        provides = re.search(rf"^Provides:.*(?<![\w.+-]){re.escape(name)}(?![\w.+-])", index, re.MULTILINE)
        if provides is None:
            return None
        start = index.rfind("\nPackage: ", 0, provides.start()) + 1
    else:
        start = stanza.start()
    end = index.find("\n\n", start)
    fields = dict(re.findall(r"^([\w-]+): (.*)$", index[start : end if end >= 0 else len(index)], re.MULTILINE))
    return DebianPackage(fields.get("Package", name), fields.get("Version", "?"))


def distribution_metadata_files(dist_packages: Path) -> list[Path]:
    """METADATA of each .dist-info, PKG-INFO of each .egg-info directory, and .egg-info files."""
    if not dist_packages.is_dir():
        return []
    found = []
    for entry in sorted(dist_packages.iterdir()):
        if entry.suffix == ".dist-info":
            found.append(entry / "METADATA")
        elif entry.suffix == ".egg-info":
            found.append(entry / "PKG-INFO" if entry.is_dir() else entry)
    return [f for f in found if f.is_file()]


def parse_metadata(path: Path) -> dict[str, str]:
    from email.parser import HeaderParser

    return dict(HeaderParser().parsestr(path.read_text(errors="replace")).items())


def valid_version(text: str) -> bool:
    from packaging.version import InvalidVersion, Version

    try:
        Version(text)
    except InvalidVersion:
        return False
    return True


def placeholder_wheel(directory: Path, name: str, version: str) -> Path:
    """An empty pure wheel that only says `name` `version` is there."""
    import base64
    import hashlib

    stem = f"{name.replace('-', '_')}-{version}"
    members = {
        f"{stem}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{stem}.dist-info/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: buildkit\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = [
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data.encode()).digest()).rstrip(b'=').decode()},"
        f"{len(data.encode())}"
        for path, data in members.items()
    ]
    members[f"{stem}.dist-info/RECORD"] = "\n".join([*record, f"{stem}.dist-info/RECORD,,"]) + "\n"
    wheel = directory / f"{stem}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in members.items():
            zf.writestr(zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return wheel


# A refused requirement ---------------------------------------------------------------------------

MAX_CHAIN_DEPTH = 8


def refuse_missing_wheel(
    missing: MissingWheel,
    requirements: Sequence[str],
    base: DebianBase,
    recipe: Recipe,
    debian: DebianDistributions,
    work: Path,
) -> UserError:
    """The requirement at fault, the chain of requirements that pulled it in, the wheel pip would
    have taken for another ARM platform if there is one, and the fix: the Debian package that
    provides it, or the docker backend."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    where = f"{recipe.path}: python.requirements"
    try:
        name = canonicalize_name(Requirement(missing.requirement).name)
    except InvalidRequirement:
        return missing
    with step(f"looking for what pulled in {missing.requirement}"):
        chain = requirement_chain(requirements, name, base, debian, work, where)
        other = wheel_for_other_platform(missing.requirement, base, recipe, work, where)
        package = debian.package_for(name)
    pulled = f" (pulled in by {' → '.join(chain)})" if len(chain) > 1 else ""
    message = f"{where}: no pure-Python or ARMv6 wheel of {missing.requirement}{pulled} for the target's CPython"
    if other:
        message += f" ({other})"
    return UserError(f"{message}: {debian_fix(package, missing.requirement, base)}")


def debian_fix(package: DebianPackage | None, requirement: str, base: DebianBase) -> str:
    from packaging.requirements import Requirement

    if package is None:
        return WHEEL_HINT
    docker = 'set python.backend = "docker" to build it for the target from source'
    if not Requirement(requirement).specifier.contains(package.upstream_version, prereleases=True):
        return (
            f"Debian {base.suite} {base.arch}'s {package.name} is {package.version}, which does not satisfy "
            f"{requirement}: {docker}"
        )
    return f'add "{package.name}" (Debian {base.suite} {base.arch}: {package.version}) to python.packages, or {docker}'


def requirement_chain(
    requirements: Sequence[str], culprit: str, base: DebianBase, debian: DebianDistributions, work: Path, where: str
) -> tuple[str, ...]:
    """The shortest chain of requirements from one of the recipe's to `culprit`: breadth first, one
    `pip download --no-deps` per level (any ARM platform: only the metadata matters). () when it
    cannot be told: the refusal still names the requirement."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    parents: dict[str, str | None] = {}
    level = []
    for text in requirements:
        requirement = Requirement(text)
        if canonicalize_name(requirement.name) not in parents:
            parents[canonicalize_name(requirement.name)] = None
            level.append(requirement)
    for _ in range(MAX_CHAIN_DEPTH):
        if culprit in parents or not level:
            break
        dest = Path(tempfile.mkdtemp(prefix="chain-", dir=work))
        wanted: dict[str, Requirement] = {
            canonicalize_name(r.name): r for r in level if canonicalize_name(r.name) not in debian.versions
        }
        if not wanted:
            break
        try:
            pip_download(
                [str(r) for r in wanted.values()],
                base,
                base.wheel_platforms + base.other_wheel_platforms,
                dest,
                where,
                deps=False,
            )
        except UserError:
            return ()
        level = []
        for wheel in wheels_in(dest):
            parent = distribution_name(wheel.path.name)
            extras = wanted[parent].extras if parent in wanted else set()
            for dependency in wheel_dependencies(wheel.path, extras, base.python):
                child = canonicalize_name(dependency.name)
                if child not in parents and child not in debian.versions:
                    parents[child] = parent
                    level.append(dependency)
    if culprit not in parents:
        return ()
    chain = [culprit]
    while (ancestor := parents[chain[-1]]) is not None:
        chain.append(ancestor)
    return tuple(reversed(chain))


def wheel_dependencies(path: Path, extras: set[str], python: PythonVersion) -> list[Requirement]:
    """The wheel's Requires-Dist that apply on the target with the requested extras."""
    from email.parser import HeaderParser

    from packaging.requirements import Requirement

    with zipfile.ZipFile(path) as zf:
        name = next((n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1), None)
        if name is None:
            return []
        headers = HeaderParser().parsestr(zf.read(name).decode(errors="replace"))
    environment = target_environment(python)
    applicable = []
    for text in headers.get_all("Requires-Dist") or []:
        requirement = Requirement(text)
        if requirement.marker is None or any(
            requirement.marker.evaluate({**environment, "extra": extra}) for extra in (*sorted(extras), "")
        ):
            applicable.append(requirement)
    return applicable


def target_environment(python: PythonVersion) -> dict[str, str]:
    """PEP 508 marker values of the target's interpreter (Debian armel's CPython on an ARM1176)."""
    return {
        "implementation_name": "cpython",
        "os_name": "posix",
        "platform_machine": "armv6l",
        "platform_python_implementation": "CPython",
        "platform_system": "Linux",
        "python_full_version": f"{python.xy}.0",
        "python_version": python.xy,
        "sys_platform": "linux",
    }


def wheel_for_other_platform(requirement: str, base: DebianBase, recipe: Recipe, work: Path, where: str) -> str:
    """Why the wheel pip would have taken for another ARM platform is refused; "" when there is none."""
    dest = Path(tempfile.mkdtemp(prefix="other-", dir=work))
    try:
        pip_download([requirement], base, base.wheel_platforms + base.other_wheel_platforms, dest, where, deps=False)
    except UserError:
        return ""
    for wheel in wheels_in(dest):
        try:
            check_wheel(wheel, base, recipe)
        except UserError as refused:
            return str(refused).removeprefix(f"{where}: ").removesuffix(f": {WHEEL_HINT}")
    return ""


def source_refused(name: str, where: str) -> UserError:
    """Building an sdist runs its compiler: the native backend runs no ARM code, and the host's
    compiler would build for the host."""
    return UserError(
        f"{where}: {name} is a source distribution, which the native backend does not build: "
        f'set python.backend = "docker" to build it for ARMv6 in an ARM container, '
        "or use the distro package"
    )


def download_source(requirement: str, base: DebianBase, work: Path, where: str) -> Path:
    dest = Path(tempfile.mkdtemp(prefix="sdist-", dir=work))
    try:
        pip(
            ["download", "--no-deps", "--no-binary=:all:", "--dest", str(dest), "--", requirement],
            where=where,
            what=f"downloading the source of {requirement}",
            cache=base.cache,
        )
    except MissingWheel:
        raise UserError(
            f"{where}: there is neither a pure-Python or ARMv6 wheel nor a source distribution of "
            f"{requirement}: use the distro package (python.packages)"
        ) from None
    downloaded = sorted(dest.iterdir())
    if len(downloaded) != 1:
        raise UserError(
            f"{where}: pip gave {len(downloaded)} files for the source of {requirement}: pin it to one release"
        )
    return downloaded[0]


def distribution_name(filename: str) -> str:
    """The normalised project name of an sdist or wheel file name (PEP 503)."""
    from packaging.utils import canonicalize_name

    stem = re.sub(r"\.(tar\.gz|tar\.bz2|tar\.xz|tgz|zip|whl)$", "", filename)
    return canonicalize_name(stem.split("-")[0] if filename.endswith(".whl") else stem.rsplit("-", 1)[0])


def pin_built_requirement(requirement: str, built: Sequence[Wheel]) -> str:
    """A direct reference to a source distribution that has just been built becomes `name==version`,
    which pip then takes from the built wheels."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    parsed = Requirement(requirement)
    if parsed.url is None:
        return requirement
    for wheel in built:
        if distribution_name(wheel.path.name) == canonicalize_name(parsed.name):
            extras = f"[{','.join(sorted(parsed.extras))}]" if parsed.extras else ""
            marker = f"; {parsed.marker}" if parsed.marker else ""
            return f"{parsed.name}{extras}=={wheel.version}{marker}"
    return requirement


# Building from source (docker backend) ------------------------------------------------------------

SOURCE_DIR = "/build/src"
BUILT_WHEELS_DIR = "/build/wheels"


def build_wheels_from_source(
    sources: Sequence[Path], built_names: set[str], runner: ArmRunner, recipe: Recipe, base: DebianBase, dest: Path
) -> list[Wheel]:
    """Build each source distribution into a wheel in one ARM container whose tree is the base's
    compiler and Python headers plus the recipe's packages and build_packages; with QEMU_CPU=arm1176
    the compiler, pip and everything they start report an ARMv6 machine, so the wheels are tagged
    linux_armv6l and hold code for Debian's armel target. Compiler paths are mapped away and debug
    information left out, so that the same source gives the same wheel."""
    where = f"{recipe.path}: python.requirements"
    names = [distribution_name(s.name) for s in sources]
    if again := [s.name for s, n in zip(sources, names, strict=True) if n in built_names]:
        raise UserError(
            f"{where}: the wheel built from {again[0]} is not one pip can install for the target "
            "(check its name, version and tags): use the distro package"
        )
    built_names.update(names)
    settings = recipe.settings
    with tempfile.TemporaryDirectory(prefix="buildkit-build-root-") as tmp:
        root = Path(tmp) / "rootfs"
        packages = dict.fromkeys(base.build_packages + settings.packages + settings.build_packages)
        extract_packages(list(packages), recipe, base, root, field="python.build_packages")
        (root / "tmp").mkdir(mode=0o1777, exist_ok=True)
        directories = [unpack_source(s, root / SOURCE_DIR.lstrip("/"), where) for s in sources]
        argv = [
            base.python.interpreter,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--wheel-dir",
            BUILT_WHEELS_DIR,
            *(f"{SOURCE_DIR}/{d}" for d in directories),
        ]
        what = f"building {', '.join(s.name for s in sources)} from source"
        with step(f"{what} (ARM container)"):
            runner.run(root, argv, env=source_build_environment(base.epoch), outputs=[BUILT_WHEELS_DIR], what=what)
        wheels = []
        for wheel in sorted((root / BUILT_WHEELS_DIR.lstrip("/")).glob("*.whl")):
            wheels.append(parse_wheel(Path(shutil.move(wheel, dest / wheel.name))))
    if len(wheels) != len(sources):
        raise UserError(f"{where}: building {', '.join(s.name for s in sources)} gave {len(wheels)} wheels")
    return wheels


def unpack_source(sdist: Path, dest: Path, where: str) -> str:
    """The sdist's top directory, unpacked safely under `dest` (a fixed path, so that nothing of the
    build host's paths reaches the wheel); its name."""
    with open_artifact(sdist) as tree:
        if tree.problems:
            raise UserError(f"{where}: {sdist.name}: {tree.problems[0].message}")
        tops = sorted(tree.root.iterdir()) if tree.is_tree else []
        if len(tops) != 1 or not tops[0].is_dir() or tops[0].is_symlink():
            raise UserError(
                f"{where}: {sdist.name} is not a source distribution (one top directory, "
                "name-version): rebuild it with `python -m build --sdist`"
            )
        shutil.copytree(tops[0], dest / tops[0].name, symlinks=True)
        return tops[0].name


def source_build_environment(epoch: int) -> dict[str, str]:
    return {
        "SOURCE_DATE_EPOCH": str(epoch),
        "PYTHONHASHSEED": "0",
        "PYTHONDONTWRITEBYTECODE": "1",
        "HOME": "/tmp",
        "PATH": "/usr/bin:/bin",
        "LC_ALL": "C.UTF-8",
        "PIP_ROOT_USER_ACTION": "ignore",
        "CFLAGS": f"-g0 -ffile-prefix-map={SOURCE_DIR}/=",
        "CXXFLAGS": f"-g0 -ffile-prefix-map={SOURCE_DIR}/=",
    }


def wheels_in(directory: Path) -> list[Wheel]:
    return [parse_wheel(p) for p in sorted(directory.glob("*.whl"))]


def install_wheels(wheels: Sequence[Wheel], base: DebianBase, rootfs: Path) -> None:
    # By name from the download directory, not by file path: a path would leave a direct_url.json
    # naming a temporary directory in every .dist-info.
    pip(
        [
            "install",
            "--target",
            str(rootfs / DIST_PACKAGES),
            "--no-index",
            "--find-links",
            str(wheels[0].path.parent),
            "--no-deps",
            "--no-compile",
            "--no-warn-script-location",
            *pip_target_options(base.python, base.wheel_platforms),
            "--",
            *(f"{w.name}=={w.version}" for w in wheels),
        ],
        where=str(rootfs),
        what="installing the wheels",
    )
    # Console scripts get the build host's interpreter in their #! line: useless on the device.
    shutil.rmtree(rootfs / DIST_PACKAGES / "bin", ignore_errors=True)


def pip_target_options(python: PythonVersion, platforms: Sequence[str]) -> list[str]:
    options = [
        "--only-binary=:all:",
        "--python-version",
        python.xy,
        "--implementation",
        "cp",
        "--abi",
        f"cp{python.major}{python.minor}",
        "--abi",
        "abi3",
        "--abi",
        "none",
    ]
    for tag in platforms:
        options += ["--platform", tag]
    return options


def pip(args: list[str], where: str, what: str, links: Sequence[Path] = (), cache: Path | None = None) -> None:
    """pip as a subprocess; `links` are offered as find-links directories besides any the user set;
    downloads are cached in buildkit's cache (`cache`), or not at all."""
    env = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONHASHSEED": "0"}
    env.update({"PIP_CACHE_DIR": str(cache / "pip")} if cache else {"PIP_NO_CACHE_DIR": "1"})
    if links:
        env["PIP_FIND_LINKS"] = " ".join(filter(None, (os.environ.get("PIP_FIND_LINKS"), *map(str, links))))
    proc = subprocess.run(
        # Not --quiet: pip then leaves out why a resolution is impossible (what has no file at all).
        [sys.executable, "-m", "pip", *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode == 0:
        return
    output = proc.stdout + proc.stderr
    # After backtracking through every release of a requirement, pip names what has no file at all.
    unavailable = re.search(r"no matching distributions available for your environment:\n +(\S+)", output)
    if no_match := re.search(r"No matching distribution found for (\S+)", output) or unavailable:
        raise MissingWheel(
            f"{where}: no pure-Python or ARMv6 wheel of {no_match.group(1)} for the target's CPython: {WHEEL_HINT}",
            no_match.group(1),
        )
    if re.search(r"NewConnectionError|Max retries exceeded|Network is unreachable|Temporary failure in name", output):
        raise UserError(
            f"{where}: the package index is unreachable while {what}: check the network "
            f"or PIP_INDEX_URL / PIP_FIND_LINKS"
        )
    if conflict := re.search(r"The conflict is caused by:\n((?:    .*\n)+)", output):
        lines = [line.strip() for line in conflict.group(1).splitlines()]
        causes = "; ".join(lines[:3] + (["…"] if len(lines) > 3 else []))
        raise UserError(
            f"{where}: the requirements conflict while {what} ({causes}; a version "
            f"+{DEBIAN_LOCAL_VERSION} is what python.packages installs): change a pin or the Debian packages"
        )
    errors = [line for line in output.splitlines() if line.startswith("ERROR:")]
    raise UserError(f"{where}: pip failed {what}: {(errors or output.strip().splitlines() or ['?'])[-1]}")


def parse_wheel(path: Path) -> Wheel:
    parts = path.name[: -len(".whl")].split("-")
    if len(parts) not in (5, 6):
        raise UserError(f"{path.name}: not a wheel file name (name-version-python-abi-platform.whl)")
    return Wheel(path, parts[0], parts[1], parts[-1])


def check_wheel(wheel: Wheel, base: DebianBase, recipe: Recipe) -> None:
    """Pure wheels pass. A binary wheel must be tagged ARMv6, hold extension modules the armel
    interpreter loads, and pass the arch gate."""
    if wheel.pure:
        return
    refuse = f"{recipe.path}: python.requirements: {wheel.path.name} is a binary wheel for {wheel.platform}"
    if wheel.platform not in base.wheel_platforms:
        raise UserError(f"{refuse}, which {recipe.target.board} ({recipe.target.cpu}) cannot run: {WHEEL_HINT}")
    foreign = [n for n in wheel_extension_modules(wheel.path) if not loadable_extension(n, base)]
    if foreign:
        raise UserError(
            f"{refuse} but {foreign[0]} is not built for {base.triplet} (the soft-float ABI of "
            f"Debian {base.arch}): {WHEEL_HINT}"
        )
    from buildkit.archgate.gate import verify_artifacts

    report = verify_artifacts(
        [wheel.path], profile=recipe.gate.profile, scan_code=True, extra_waivers=recipe.gate.waivers
    )
    if not report.ok:
        first = report.errors[0]
        raise UserError(
            f"{refuse} but the arch gate refuses it ({first.path}: {first.rule}: {first.message}): {WHEEL_HINT}"
        )


def wheel_extension_modules(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as zf:
        return sorted(n for n in zf.namelist() if re.search(r"\.cpython-[^/]*\.so$|\.abi3\.so$", n))


def loadable_extension(name: str, base: DebianBase) -> bool:
    return name.endswith(f"-{base.triplet}.so") or name.endswith(".abi3.so")


# 3. The app --------------------------------------------------------------------------------------


def copy_app(recipe: Recipe, dest: Path) -> None:
    """The recipe's source directory, without the recipe itself and without caches or VCS data."""

    def skip(directory: Path, name: str) -> bool:
        if name in SKIPPED_NAMES or name == ".pytest_cache" or name.endswith(".pyc"):
            return True
        return directory.resolve() == recipe.path.parent and name == recipe.path.name

    copy_source(recipe.source_dir, dest, recipe.source_policy, skip)


# 4. Pruning --------------------------------------------------------------------------------------


def prune_rootfs(rootfs: Path, base: DebianBase, requested: Sequence[str], policy: PrunePolicy) -> None:
    for rel in (*policy.trees, f"usr/lib/{base.triplet}/gconv"):
        remove(rootfs / rel)
    for package, patterns in policy.package_manager_files.items():
        if package not in requested:
            for pattern in patterns:
                for path in rootfs.glob(pattern):
                    remove(path)
    stdlib = rootfs / base.python.stdlib
    for rel in policy.stdlib.removed:
        remove(stdlib / rel)
    for top in (stdlib, rootfs / DIST_PACKAGES, rootfs / APP_DIR):
        remove_caches_and_tests(top, policy.stdlib.test_dirs)
    for ext in (stdlib / "lib-dynload").glob("*.so"):
        if policy.pruned_extension(ext.name):
            ext.unlink()
    for codec in (stdlib / "encodings").glob("*.py"):
        if codec.stem not in policy.stdlib.kept_encodings:
            codec.unlink()
    for name in os.listdir(rootfs / "dev"):
        remove(rootfs / "dev" / name)
    remove_unused_libraries(rootfs, base, policy)


def remove_unused_libraries(rootfs: Path, base: DebianBase, policy: PrunePolicy) -> None:
    """Delete the shared libraries that no remaining program or extension module needs (DT_NEEDED,
    transitively), so that pruning a module also prunes what it alone linked; then the plugins
    (files in subdirectories of the library directories) whose own libraries are gone."""
    lib_dirs = [d for d in (rootfs / "lib" / base.triplet, rootfs / "usr/lib" / base.triplet) if d.is_dir()]
    libraries = {p.name: p for d in lib_dirs for p in d.iterdir() if ".so" in p.name and not p.is_dir()}
    elves = elf_files(rootfs)
    roots = [p for p in elves if not any(d in p.parents for d in lib_dirs)]
    roots += [p for name, p in libraries.items() if policy.dlopened(name)]
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
    for dirpath, _, _ in os.walk(top, topdown=False):
        if dirpath != str(top) and not os.listdir(dirpath):
            os.rmdir(dirpath)


def elf_files(root: Path) -> list[Path]:
    found = []
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink() and path.is_file():
                with open(path, "rb") as fh:
                    if fh.read(4) == ELF_MAGIC:
                        found.append(path)
    return found


def dt_needed(path: Path) -> tuple[str, ...]:
    """The libraries the object names, as the loader reads them (PT_DYNAMIC), by the gate's reader."""
    try:
        with open(path, "rb") as fh:
            return link_facts(open_elf(fh, os.fstat(fh.fileno()).st_size), path.name, None).needed
    except (ElfParseError, OSError):
        return ()  # not ours to judge: the arch gate reports ELF files that do not parse


def remove_caches_and_tests(top: Path, test_dirs: frozenset[str]) -> None:
    if not top.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [d for d in dirnames if d in test_dirs or d == "__pycache__"]:
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


@dataclass(frozen=True)
class HostPython:
    path: str
    version: str


def find_host_python(python: PythonVersion, recipe: Recipe) -> HostPython:
    """A host CPython of the target's X.Y: same magic number, same compiler, same bytecode as the
    target interpreter would write (the tests compare the two backends' trees byte for byte)."""
    if sys.implementation.name == "cpython" and sys.version_info[:2] == (python.major, python.minor):
        return HostPython(sys.executable, platform.python_version())
    found = shutil.which(f"python{python.xy}")
    probe = (
        subprocess.run(
            [found, "-c", "import platform; print(platform.python_implementation(), platform.python_version())"],
            capture_output=True,
            text=True,
            check=False,
        )
        if found
        else None
    )
    implementation, _, version = (probe.stdout.strip() if probe and probe.returncode == 0 else "").partition(" ")
    if found is None or implementation != "CPython" or not version.startswith(f"{python.xy}."):
        raise UserError(
            f'{recipe.path}: python.backend = "native" compiles the bytecode with a host CPython '
            f"{python.xy}, the target's version, and there is none (this is Python "
            f'{platform.python_version()}): install python{python.xy}, or set python.backend = "docker"'
        )
    return HostPython(found, version)


def compile_bytecode(rootfs: Path, python: PythonVersion, recipe: Recipe, runner: ArmRunner | None) -> None:
    """The standard library sourceless, the app and dist-packages with __pycache__: by the target
    interpreter in the ARM container (docker), or by a host CPython of the same version (native)."""
    present = [d for d in ("/" + DIST_PACKAGES, "/" + APP_DIR) if (rootfs / d.lstrip("/")).is_dir()]
    plan = {"sourceless": ["/" + python.stdlib], "cached": present}
    # PYTHONHASHSEED fixes the order of frozenset constants in the marshalled code; without
    # PYTHONDONTWRITEBYTECODE the compiler's own imports would leave timestamp-based caches.
    env = {"PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1", "PATH": "/usr/bin:/bin"}
    if runner is None:
        host = find_host_python(python, recipe)
        argv = [host.path, "-s", "-c", COMPILE_SCRIPT, json.dumps({**plan, "root": str(rootfs.resolve())})]
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            raise UserError(f"{rootfs}: compiling the Python code with {host.path} failed: {tail}")
    else:
        runner.run(
            rootfs,
            [python.interpreter, "-s", "-c", COMPILE_SCRIPT, json.dumps({**plan, "root": "/"})],
            env=env,
            outputs=["/" + python.stdlib, *present],
            what="compiling the Python code",
        )
    drop_compiled_sources(rootfs / python.stdlib)


def drop_compiled_sources(top: Path) -> None:
    for dirpath, _, filenames in os.walk(top):
        for name in filenames:
            if name.endswith(".py") and name + "c" in filenames:
                (Path(dirpath) / name).unlink()


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
