"""Recipe values the overlay cannot carry, and the overlay skeleton itself."""

from __future__ import annotations

import pytest

from buildkit.errors import UserError
from buildkit.recipe import load_recipe
from buildkit.resources import ROOTFS_DIR
from support.package import (
    RECIPE_TOML,
    write_recipe,
)


@pytest.mark.parametrize(
    "change, message",
    [
        ("uid = 10001, gid = 10001", "uid = 65534, gid = 10001"),
        ('writable = ["/var/lib/demo"]', 'writable = ["/run/state"]'),
        ('writable = ["/var/lib/demo"]', 'writable = ["/var/lib/my data"]'),
        ('version = "1.2.3"', 'version = "1.2.3; reboot"'),
        ('name = "demo", uid', 'name = "Demo User", uid'),
    ],
    ids=["uid-taken", "writable-under-run", "writable-space", "version-shell", "user-name"],
)
def test_recipe_values_the_overlay_cannot_carry_are_refused_when_the_recipe_loads(tmp_path, change, message):
    with pytest.raises(UserError, match=r"recipe\.toml: (run|version)"):
        load_recipe(write_recipe(tmp_path, RECIPE_TOML.replace(change, message)))


def test_skeleton_has_no_stray_files():
    for path in ROOTFS_DIR.rglob("*"):
        assert not path.name.startswith(".") and not path.name.endswith(("~", ".orig", ".rej")), path
        assert not path.is_symlink(), f"{path}: features declare runlevel links in feature.toml"
