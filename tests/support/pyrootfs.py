"""For the Python payload tests: building hello-py (the `hello_py_build` fixture in
integration/conftest.py does it once per session), recipe variants,
tree comparison, and the rootfs run as an ARM1176 (qemu-arm-static -cpu arm1176 in bubblewrap,
the rootfs as `/`, as the recipe's non-root user)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from buildkit.build.pyrootfs import DebianBase
from buildkit.build.stage import BuildResult, build_recipe
from buildkit.context import build_context
from buildkit.recipe import Recipe, load_recipe
from buildkit.schema import Where
from support import REPO, require_tools
from support.go import RunningService, environment

HELLO_PY = REPO / "recipes" / "hello-py"
SERVICE_UID = 10001  # recipes/hello-py/recipe.toml run.user
START_TIMEOUT_S = 120
EPOCH = "1700000000"


def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One BUILDKIT_CACHE for the session's Python builds, so the .debs are downloaded once."""
    return tmp_path_factory.getbasetemp() / "pyrootfs-cache"


def debian_base(recipe: Recipe, cache: Path) -> DebianBase:
    """The userland of a Python recipe as its build uses it, with `cache` as buildkit's cache."""
    userland = recipe.target.userland_named(recipe.settings.base, Where(recipe.path, "python.base"))
    return DebianBase.of(recipe.target, userland, cache, int(EPOCH))


def build_in(recipe_dir: Path, out: Path, cache: Path, **env: str) -> BuildResult:
    with environment(BUILDKIT_CACHE=str(cache), SOURCE_DATE_EPOCH=EPOCH, **env):
        return build_recipe(build_context(load_recipe(recipe_dir), out))


def recipe_variant(dest: Path, **python: str) -> Path:
    """hello-py copied to `dest`, with [python] keys replaced by the given TOML values."""
    shutil.copytree(HELLO_PY, dest, ignore=shutil.ignore_patterns("__pycache__"))
    recipe = dest / "recipe.toml"
    text = recipe.read_text()
    for key, value in python.items():
        line = f"{key} = {value}"
        text, found = re.subn(rf"^{key} = .*$", line.replace("\\", "\\\\"), text, count=1, flags=re.MULTILINE)
        if not found:
            text = text.replace("[python]\n", f"[python]\n{line}\n", 1)
    recipe.write_text(text)
    return dest


@dataclass(frozen=True)
class Entry:
    kind: str  # "file", "dir", "link"
    mode: int
    mtime: int
    content: str  # sha256 of a file, target of a link, "" for a directory


def tree_entries(root: Path) -> dict[str, Entry]:
    entries = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            if path.is_symlink():
                entry = Entry("link", st.st_mode, int(st.st_mtime), os.readlink(path))
            elif path.is_dir():
                entry = Entry("dir", st.st_mode, int(st.st_mtime), "")
            else:
                entry = Entry("file", st.st_mode, int(st.st_mtime), hashlib.sha256(path.read_bytes()).hexdigest())
            entries[path.relative_to(root).as_posix()] = entry
    return entries


def tree_size(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def differences(a: dict[str, Entry], b: dict[str, Entry]) -> list[str]:
    return sorted(set(a) ^ set(b)) + sorted(k for k in set(a) & set(b) if a[k] != b[k])


def sandbox_command(
    rootfs: Path,
    argv: Sequence[str],
    *,
    binds: dict[str, Path] | None = None,
    uid: int = SERVICE_UID,
    env: dict[str, str] | None = None,
) -> list[str]:
    """bwrap with the rootfs read-only as `/`, its own /proc, /dev, /tmp and /run, the host's network
    (so that a test can reach a service), and qemu-arm-static -cpu arm1176 running `argv`. QEMU_CPU
    makes programs the payload starts (through binfmt_misc) ARM1176s too."""
    require_tools("bwrap", "qemu-arm-static")
    qemu = shutil.which("qemu-arm-static")
    command = [
        "bwrap",
        "--ro-bind",
        str(rootfs),
        "/",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",
        "--tmpfs",
        "/run",
        "--ro-bind",
        qemu,
        "/run/qemu-arm-static",
        "--unshare-user",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--uid",
        str(uid),
        "--gid",
        str(uid),
        "--die-with-parent",
        "--clearenv",
        "--setenv",
        "QEMU_CPU",
        "arm1176",
        "--setenv",
        "PATH",
        "/usr/bin:/bin",
    ]
    for target, source in (binds or {}).items():
        command += ["--ro-bind", str(source), target]
    for name, value in (env or {}).items():
        command += ["--setenv", name, value]
    return [*command, "/run/qemu-arm-static", "-cpu", "arm1176", *argv]


def run_in_rootfs(rootfs: Path, argv: Sequence[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(sandbox_command(rootfs, argv), capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def run_hello_py(
    rootfs: Path, work: Path, port: int, token: str | None, env: dict[str, str] | None = None
) -> Iterator[RunningService]:
    """The recipe's entrypoint and arguments, listening on 127.0.0.1:`port`, the token file bound
    where the recipe expects it, `env` added to its environment."""
    recipe = load_recipe(HELLO_PY)
    args = [a.replace(":8080", f"127.0.0.1:{port}") for a in recipe.run.args]
    binds = {}
    if token is not None:
        token_file = work / "debug_token"
        token_file.write_text(token + "\n")
        os.chmod(token_file, 0o644)
        binds["/run/secrets/debug_token"] = token_file
    stderr = work / "hello-py.stderr"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            sandbox_command(rootfs, [recipe.run.entrypoint, *args], binds=binds, env=env),
            stdout=subprocess.DEVNULL,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )
    service = RunningService(f"http://127.0.0.1:{port}", proc, stderr)
    try:
        wait_for_listen(service)
        yield service
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for_listen(service: RunningService) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if "listening on" in service.log():
            return
        if service.process.poll() is not None:
            raise AssertionError(f"hello-py exited with {service.process.returncode}: {service.log()}")
        time.sleep(0.1)
    raise AssertionError(f"hello-py did not listen within {START_TIMEOUT_S} s: {service.log()}")


def terminate_payload(service: RunningService) -> int:
    """SIGTERM to the emulated interpreter itself (bwrap does not forward signals); its exit code."""
    qemu_pid = find_descendant(service.process.pid, "qemu-arm-static")
    os.kill(qemu_pid, signal.SIGTERM)
    return service.process.wait(timeout=60)


def find_descendant(pid: int, needle: str) -> int:
    pending = [pid]
    while pending:
        current = pending.pop()
        cmdline = Path(f"/proc/{current}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        if needle in cmdline.split(" ", 1)[0]:
            return current
        for task in Path(f"/proc/{current}/task").iterdir():
            pending += [int(c) for c in (task / "children").read_text().split()]
    raise AssertionError(f"no process {needle!r} below pid {pid}")


def make_wheel(
    dest: Path, name: str, version: str, tag: str, files: dict[str, bytes], *, scripts: bool = False
) -> Path:
    """A minimal valid wheel (METADATA, WHEEL, RECORD; an entry point if `scripts`)."""
    import base64
    import zipfile

    dest.mkdir(parents=True, exist_ok=True)
    dist_info = f"{name}-{version}.dist-info"
    pure = tag.endswith("-any")
    members = dict(files)
    members[f"{dist_info}/METADATA"] = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode()
    members[f"{dist_info}/WHEEL"] = (
        f"Wheel-Version: 1.0\nGenerator: buildkit-tests\nRoot-Is-Purelib: {'true' if pure else 'false'}\nTag: {tag}\n"
    ).encode()
    if scripts:
        members[f"{dist_info}/entry_points.txt"] = f"[console_scripts]\n{name} = {name}:main\n".encode()
    record = "".join(
        f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for path, data in members.items()
    )
    members[f"{dist_info}/RECORD"] = (record + f"{dist_info}/RECORD,,\n").encode()
    wheel = dest / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, data in members.items():
            zf.writestr(path, data)
    return wheel


def extension_wheel(dest: Path, work: Path, compiler: str, tag: str, triplet: str) -> Path:
    """A wheel `fastext` holding one C extension module built by `compiler` for `triplet`."""
    require_tools(compiler)
    source = work / "fast.c"
    source.write_text("int fast_add(int a, int b) { return a + b; }\n")
    shared = work / "fast.so"
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(shared), str(source)], check=True, capture_output=True
    )
    files = {"fastext/__init__.py": b"", f"fastext/_fast.cpython-311-{triplet}.so": shared.read_bytes()}
    return make_wheel(dest, "fastext", "1.0", tag, files)


def armv7l_extension_wheel(dest: Path, work: Path) -> Path:
    """What PyPI or piwheels offer for many packages: an extension built for ARMv7 hard-float."""
    return extension_wheel(dest, work, "arm-linux-gnueabihf-gcc", "cp311-cp311-linux_armv7l", "arm-linux-gnueabihf")


def pip_from(links: Path):
    """pip (as buildkit runs it) reads only the local directory `links`."""
    return environment(PIP_FIND_LINKS=str(links), PIP_NO_INDEX="1")


HELLEXT_C = """\
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Floating point through the C ABI: soft-float on armel, which the gate checks. */
static PyObject *scaled(PyObject *self, PyObject *arg) {
    double x = PyFloat_AsDouble(arg);
    if (x == -1.0 && PyErr_Occurred()) return NULL;
    return PyFloat_FromDouble(x * 1.5);
}

static PyMethodDef methods[] = {{"scaled", scaled, METH_O, "x * 1.5"}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "hellext", NULL, -1, methods};
PyMODINIT_FUNC PyInit_hellext(void) { return PyModule_Create(&module); }
"""


def c_extension_sdist(dest: Path, work: Path, requires: Sequence[str] = ()) -> Path:
    """hellext-1.0.tar.gz: a setuptools sdist of one C extension module, `hellext.scaled(x)`."""
    import tarfile

    project = work / "hellext-1.0"
    project.mkdir(parents=True)
    (project / "setup.py").write_text(
        "from setuptools import Extension, setup\n"
        f"setup(name='hellext', version='1.0', install_requires={list(requires)!r},\n"
        "      ext_modules=[Extension('hellext', ['hellext.c'])])\n"
    )
    (project / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: hellext\nVersion: 1.0\n")
    (project / "hellext.c").write_text(HELLEXT_C)
    dest.mkdir(parents=True, exist_ok=True)
    sdist = dest / "hellext-1.0.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        tar.add(project, arcname=project.name)
    return sdist
