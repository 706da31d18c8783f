"""The python kind's pruning policy (verify/python/prune.toml) and what it removes from a tree."""

from __future__ import annotations

import pytest

from buildkit.build.pyrootfs import PRUNE_POLICY_FILE, DebianBase, PythonVersion, prune_policy, prune_rootfs
from buildkit.errors import UserError

SUFFIX = ".cpython-311-arm-linux-gnueabi.so"


@pytest.mark.parametrize(
    ("module", "pruned"),
    [
        ("_testcapi", True),
        ("_testinternalcapi", True),
        ("_ctypes_test", True),
        ("_codecs_jp", True),
        ("_multibytecodec", True),
        ("_curses_panel", True),
        ("xxlimited_35", True),
        ("readline", True),
        ("audioop", True),
        ("_ctypes", False),
        ("_ssl", False),
        ("_json", False),
        ("_decimal", False),
        ("readline_extra", False),
    ],
)
def test_extension_modules_are_matched_by_their_whole_module_name(module, pruned):
    assert prune_policy().pruned_extension(module + SUFFIX) is pruned


@pytest.mark.parametrize(
    ("library", "kept"),
    [
        ("ld-linux.so.3", True),
        ("ld-linux-armhf.so.3", True),
        ("libc.so.6", True),
        ("libm.so.6", True),
        ("libnss_files.so.2", True),
        ("libgcc_s.so.1", True),
        ("libresolv.so.2", True),
        ("libcrypt.so.1", False),
        ("libmd.so.0", False),
        ("libssl.so.3", False),
    ],
)
def test_glibc_and_what_it_dlopens_are_kept_whatever_names_them(library, kept):
    assert prune_policy().dlopened(library) is kept


def test_a_policy_with_an_unknown_key_is_refused_naming_the_file_and_the_key(tmp_path):
    policy = tmp_path / "prune.toml"
    policy.write_text(PRUNE_POLICY_FILE.read_text().replace("[libraries]", "[libraries]\nkeep = []"))
    with pytest.raises(UserError, match=r"prune\.toml.*libraries\.keep.*unknown key"):
        prune_policy(policy)


def test_pruning_removes_what_the_policy_names_and_keeps_the_rest(tmp_path):
    base = DebianBase(
        "debian", "bookworm", "armel", "arm-linux-gnueabi", PythonVersion(3, 11), (), "linux/arm/v5", (), tmp_path, 0
    )
    root = tmp_path / "rootfs"
    stdlib = root / base.python.stdlib
    files = {
        "usr/share/doc/python3/copyright": True,
        "var/lib/dpkg/status": True,
        "usr/bin/dpkg-query": True,
        "bin/tar": False,  # asked for by name
        f"{base.python.stdlib}/turtle.py": True,
        f"{base.python.stdlib}/json/__init__.py": False,
        f"{base.python.stdlib}/json/tests/test_x.py": True,
        f"{base.python.stdlib}/encodings/cp437.py": True,
        f"{base.python.stdlib}/encodings/utf_8.py": False,
        f"{base.python.stdlib}/lib-dynload/_testcapi{SUFFIX}": True,
        f"{base.python.stdlib}/lib-dynload/_ssl{SUFFIX}": False,
        f"usr/lib/{base.triplet}/gconv/IBM437.so": True,
        f"lib/{base.triplet}/libc.so.6": False,  # dlopened by what is left
        f"lib/{base.triplet}/libunused.so.1": True,  # nothing needs it
        "app/main.py": False,
    }
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("not an ELF object\n")
    (root / "dev").mkdir()
    prune_rootfs(root, base, ("python3-minimal", "tar"), prune_policy())
    left = {rel for rel in files if (root / rel).exists()}
    assert left == {rel for rel, removed in files.items() if not removed}
    assert stdlib.is_dir() and not (root / "usr/share/doc").exists()
