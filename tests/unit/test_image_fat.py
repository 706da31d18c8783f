"""The card image's geometry (buildkit.image.fat), without running sfdisk or mkfs."""

from __future__ import annotations

import pytest

from buildkit.errors import UserError
from buildkit.image.fat import ALIGNMENT, SECTOR, content_bytes, layout_for

MIB = 1 << 20


def test_the_partition_starts_at_4_mib_and_fills_the_rest_of_the_image():
    layout = layout_for(256 * MIB, 1, 2, "PISECBOOT")
    assert layout.offset == 4 * MIB == ALIGNMENT
    assert layout.offset + layout.sectors * SECTOR == layout.size == 256 * MIB


def test_a_size_is_rounded_up_to_4_mib():
    assert layout_for(100 * MIB + 1, 1, 2, "X").size == 104 * MIB


def test_a_size_too_small_for_fat32_is_refused():
    with pytest.raises(UserError, match="too small for FAT32"):
        layout_for(32 * MIB, 1, 2, "X")


def test_content_is_charged_whole_clusters(tmp_path):
    (tmp_path / "a").write_bytes(b"x")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b").write_bytes(b"y" * 5000)
    assert content_bytes(tmp_path) >= 4096 + 4096 + 8192
