"""The Python path, native backend: hello-py built for real (mmdebstrap armel, bytecode by a host
CPython of the target's version, no ARM code run), gated with the closure check, and run as an ARM1176."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import struct
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from buildkit.archgate.gate import verify_artifacts
from buildkit.build.pyrootfs import DIST_PACKAGES, PythonVersion, fetch_wheels, install_wheels
from buildkit.recipe import SMOKE_ZOMBIES_ENV, load_recipe
from support.go import ensure_binfmt_qemu_arm
from support.pyrootfs import (
    EPOCH,
    build_in,
    debian_base,
    differences,
    extension_wheel,
    make_wheel,
    pip_from,
    recipe_variant,
    run_hello_py,
    run_in_rootfs,
    session_cache,
    terminate_payload,
    tree_entries,
    tree_size,
)
from support.service_contract import (
    check_debug_logs_disabled,
    check_service_contract,
    check_slow_clients_hold_nothing,
)

pytestmark = [pytest.mark.slow, pytest.mark.root]

PYTHON = PythonVersion(3, 11)  # Debian bookworm's, as the pi1 profile's userland says
STDLIB = Path(PYTHON.stdlib)
MAX_ROOTFS_BYTES = 25 * 2**20


@pytest.fixture(scope="session")
def rootfs(hello_py_build) -> Path:
    return hello_py_build.payload_dir


def test_gate_passes_with_the_closure_check(hello_py_build):
    report = hello_py_build.gate
    assert report.ok, [f"{f.path}: {f.rule}: {f.message}" for f in report.errors]
    objects = {o.path.split("/", 1)[1]: o for o in report.objects}
    python = objects[f"usr/bin/python{PYTHON.xy}"]
    assert python.interpreter == "/lib/ld-linux.so.3"  # armel: soft-float, the ABI an ARMv6 runs
    assert "libc.so.6" in python.needed
    assert any(p.startswith(f"{STDLIB}/lib-dynload/_ssl") for p in objects), "extension modules are gated too"
    waived = {f.path.rsplit("/", 1)[-1] for f in report.waived}
    assert "libatomic.so.1.2.0" in waived, "a waived finding must stay in the report"
    gate_json = json.loads((hello_py_build.payload_dir.parent / "gate.json").read_text())
    assert gate_json["verdict"] == "pass"


def test_closure_check_is_live_on_this_tree(rootfs, tmp_path):
    """Without libz the interpreter cannot start, and the gate says so: the pass above means something."""
    copy = tmp_path / "payload"
    shutil.copytree(rootfs, copy, symlinks=True)
    for lib in (copy / "lib/arm-linux-gnueabi").glob("libz.so*"):
        lib.unlink()
    report = verify_artifacts([copy])
    missing = [f for f in report.errors if f.rule == "closure.missing"]
    assert any(f.path.endswith(f"usr/bin/python{PYTHON.xy}") and "libz.so.1" in f.message for f in missing), [
        f"{f.path}: {f.rule}: {f.message}" for f in report.errors
    ]


def test_rootfs_holds_the_interpreter_the_app_and_bytecode(rootfs):
    assert (rootfs / "usr/bin" / f"python{PYTHON.xy}").is_file()
    assert (rootfs / "app/main.py").is_file() and not (rootfs / "app/recipe.toml").exists()
    # The standard library ships as bytecode only; the app keeps its sources beside __pycache__.
    assert (rootfs / STDLIB / "json/__init__.pyc").is_file()
    assert not (rootfs / STDLIB / "json/__init__.py").exists()
    pyc = rootfs / "app/hellopy/__pycache__" / f"service.cpython-{PYTHON.major}{PYTHON.minor}.pyc"
    magic, flags = struct.unpack("<4sI", pyc.read_bytes()[:8])
    assert flags == 0b01, "hash-based and unchecked (py_compile UNCHECKED_HASH)"
    target_magic = run_in_rootfs(
        rootfs, [PYTHON.interpreter, "-I", "-c", "import importlib.util; print(importlib.util.MAGIC_NUMBER.hex())"]
    )
    assert target_magic.returncode == 0, target_magic.stderr
    assert magic.hex() == target_magic.stdout.strip()


def test_rootfs_is_pruned_and_small(rootfs):
    for gone in (
        "usr/share/doc",
        "usr/share/man",
        "usr/share/locale",
        "var/lib/dpkg",
        "var/cache",
        "etc/hostname",
        "etc/resolv.conf",
        f"{STDLIB}/test",
        f"{STDLIB}/idlelib",
        f"{STDLIB}/encodings/shift_jis.pyc",
        "usr/lib/arm-linux-gnueabi/gconv",
        "usr/bin/dpkg",
        "usr/lib/arm-linux-gnueabi/libdb-5.3.so",
    ):
        assert not (rootfs / gone).exists(), f"{gone} should have been pruned"
    assert sorted(os.listdir(rootfs / "dev")) == [], "no device nodes in a payload"
    for mount_point in ("proc", "sys", "dev", "run", "tmp"):
        assert (rootfs / mount_point).is_dir()
    assert not list(rootfs.rglob("__pycache__/*.cpython-*.opt-*.pyc"))
    size = tree_size(rootfs)
    assert size <= MAX_ROOTFS_BYTES, f"hello-py rootfs is {size / 2**20:.1f} MiB"


def test_mtimes_are_source_date_epoch(rootfs):
    stale = [rel for rel, entry in tree_entries(rootfs).items() if entry.mtime != int(EPOCH)]
    assert not stale, stale[:10]


def test_stdlib_works_as_an_arm1176(rootfs):
    """The modules a service needs load from the pruned tree, and the pruned codecs are really gone."""
    code = (
        "import ssl, hashlib, json, sqlite3, http.server, email.message, decimal, lzma, zlib, platform\n"
        "ssl.create_default_context()\n"
        "loader = json.__spec__.loader.__class__.__name__\n"
        "print(platform.machine(), hashlib.sha256(b'pi').hexdigest()[:8], loader)\n"
        "try:\n    'x'.encode('shift_jis')\nexcept LookupError:\n    print('no shift_jis')\n"
    )
    result = run_in_rootfs(rootfs, [PYTHON.interpreter, "-I", "-c", code])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "armv6l",
        hashlib.sha256(b"pi").hexdigest()[:8],
        "SourcelessFileLoader",
        "no",
        "shift_jis",
    ]


def test_hello_py_keeps_the_service_contract(rootfs, tmp_path, free_port):
    token = secrets.token_urlsafe(24)
    with run_hello_py(rootfs, tmp_path, free_port, token) as service:
        check_service_contract(service.base_url, token)
        with urllib.request.urlopen(service.base_url + "/api/data", timeout=30) as resp:
            assert json.load(resp)["machine"] == "armv6l"
        assert terminate_payload(service) == 0, service.log()
        assert "hello-py: stopped" in service.log(), "SIGTERM must stop the service gracefully"


def test_slow_clients_cannot_hold_hello_py(rootfs, tmp_path, free_port):
    with run_hello_py(rootfs, tmp_path, free_port, token="t0ken") as service:
        check_slow_clients_hold_nothing(service.base_url)
        assert service.process.poll() is None, service.log()


def test_hello_py_without_token_keeps_debug_logs_closed(rootfs, tmp_path, free_port):
    with run_hello_py(rootfs, tmp_path, free_port, token=None) as service:
        check_debug_logs_disabled(service.base_url)


def test_spawned_processes_are_arm1176_children(rootfs, tmp_path, free_port):
    ensure_binfmt_qemu_arm()
    with run_hello_py(rootfs, tmp_path, free_port, token=None, env={SMOKE_ZOMBIES_ENV: "1"}) as service:
        req = urllib.request.Request(service.base_url + "/api/spawn?n=2", method="POST")
        with urllib.request.urlopen(req, timeout=120) as resp:
            body = json.load(resp)
        assert len(body["children"]) == 2 and len(body["orphans"]) == 2, body


def test_spawn_is_not_served_unless_the_recipe_declares_the_zombie_check(rootfs, tmp_path, free_port):
    with run_hello_py(rootfs, tmp_path, free_port, token=None) as service:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(service.base_url + "/api/spawn?n=1", timeout=60)
        assert refused.value.code == 404


def test_cached_rebuild_is_a_no_op(hello_py_build, tmp_path, tmp_path_factory):
    again = build_in(Path(hello_py_build.recipe.path).parent, tmp_path / "out", session_cache(tmp_path_factory))
    assert again.cached and again.cache_key == hello_py_build.cache_key
    assert not differences(tree_entries(again.payload_dir), tree_entries(hello_py_build.payload_dir))


def test_rebuild_elsewhere_is_identical(hello_py_build, tmp_path):
    """Another directory, another cache (so another download of the .debs), another umask."""
    recipe = recipe_variant(tmp_path / "copy")
    old_umask = os.umask(0o077)
    try:
        other = build_in(recipe, tmp_path / "out", tmp_path / "cache")
    finally:
        os.umask(old_umask)
    assert not other.cached
    assert differences(tree_entries(other.payload_dir), tree_entries(hello_py_build.payload_dir)) == []


def test_pure_wheel_lands_in_dist_packages(tmp_path):
    """A pure-Python requirement from a local index, installed by pip for the target; an armv7l wheel
    of the same release beside it must not be preferred (many projects publish both)."""
    links = tmp_path / "links"
    make_wheel(links, "tinypure", "1.0", "py3-none-any", {"tinypure/__init__.py": b"VALUE = 42\n"}, scripts=True)
    make_wheel(links, "tinypure", "1.0", "cp311-cp311-linux_armv7l", {"tinypure/__init__.py": b"VALUE = 7\n"})
    rootfs = tmp_path / "rootfs"
    recipe = load_recipe(recipe_variant(tmp_path / "recipe", requirements='["tinypure"]'))
    base = debian_base(recipe, tmp_path / "cache")
    with pip_from(links):
        wheels = fetch_wheels(recipe.settings.requirements, base, tmp_path / "wheels", recipe, None)
        install_wheels(wheels, base, rootfs)
    site = rootfs / DIST_PACKAGES
    assert (site / "tinypure/__init__.py").read_bytes() == b"VALUE = 42\n"
    assert not (site / "bin").exists(), "console scripts carry the build host's interpreter"
    assert not list(site.glob("*.dist-info/direct_url.json")), "no temporary path may be recorded"


def test_armv6_soft_float_wheel_is_accepted(tmp_path):
    """A binary wheel built for Debian armel (ARMv5TE code, soft-float) passes the gate and installs."""
    links = tmp_path / "links"
    extension_wheel(links, tmp_path, "arm-linux-gnueabi-gcc", "cp311-cp311-linux_armv6l", "arm-linux-gnueabi")
    recipe = load_recipe(recipe_variant(tmp_path / "recipe", requirements='["fastext"]'))
    base = debian_base(recipe, tmp_path / "cache")
    with pip_from(links):
        wheels = fetch_wheels(recipe.settings.requirements, base, tmp_path / "wheels", recipe, None)
        install_wheels(wheels, base, tmp_path / "rootfs")
    assert (tmp_path / "rootfs" / DIST_PACKAGES / "fastext/_fast.cpython-311-arm-linux-gnueabi.so").is_file()
