"""What the gate counts as an object (files that are not ELF are not), and container images: an
OCI layout or a `docker save` archive is its file system, layers applied in order with whiteouts,
and its platform is checked against the board's."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest

from buildkit.archgate.gate import verify_artifacts
from buildkit.archgate.report import render_report
from buildkit.errors import UserError
from buildkit.walk import open_artifact
from support.gate import gate
from support.schemas import schema_errors
from support.walk import docker_save_archive, layer_tar, oci_layout

HOST_ELF = Path(shutil.which("true") or "/bin/true").resolve()


def test_non_elf_files_are_not_objects(tmp_path):
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (tmp_path / "tree" / "ELF-looking.txt").write_bytes(b"ELF\x7f not really")
    report = gate(tmp_path / "tree")
    assert report.ok and report.objects == () and report.files_scanned == 2


LAYERS = [
    {"etc": None, "etc/motd": b"base\n", "usr/share/doc/a": b"a", "usr/share/doc/b": b"b", "opt/old": b"old"},
    {"etc/.wh.motd": b"", "usr/share/doc/.wh..wh..opq": b"", "usr/share/doc/c": b"c", "opt": b"now a file"},
]


def tree_contents(tree) -> dict[str, bytes]:
    return {rel: (tree.root / rel).read_bytes() for rel in tree.files}


@pytest.mark.parametrize("form", ["oci-dir", "oci-tar", "docker-save"])
def test_an_image_is_its_layers_applied_in_order_with_whiteouts(tmp_path, form):
    if form == "docker-save":
        image = docker_save_archive(tmp_path / "img.tar", LAYERS, "linux/arm/v6")
    else:
        image = oci_layout(tmp_path / "layout", LAYERS, "linux/arm/v6")
        if form == "oci-tar":
            with tarfile.open(tmp_path / "img.tar", "w") as tar:
                tar.add(image, arcname=".")
            image = tmp_path / "img.tar"
    with open_artifact(image) as tree:
        assert tree.platform == "linux/arm/v6"
        assert tree_contents(tree) == {"opt": b"now a file", "usr/share/doc/c": b"c"}
        assert tree.display_path("opt") == f"{image}!opt"


def test_an_image_for_another_platform_is_a_violation(tmp_path):
    image = docker_save_archive(tmp_path / "img.tar", [{"app/run.sh": b"#!/bin/sh\n"}], "linux/amd64")
    report = verify_artifacts([image])
    assert [(f.path, f.rule, f.evidence["platform"]) for f in report.errors] == [
        (str(image), "image.platform", "linux/amd64")
    ]
    assert schema_errors("gate-report", json.loads(render_report(report, "json"))) == []


def test_the_board_and_its_userland_platforms_pass_and_are_reported(tmp_path):
    for platform in ("linux/arm/v6", "linux/arm/v5"):
        image = oci_layout(tmp_path / platform.replace("/", "-"), [{"app/run.sh": b"#!/bin/sh\n"}], platform)
        report = verify_artifacts([image])
        assert report.ok
        assert [(f.rule, f.severity, f.evidence["platform"]) for f in report.findings] == [
            ("image.platform", "info", platform)
        ]


def test_a_foreign_elf_in_an_image_layer_is_found_by_its_image_path(tmp_path):
    layers = [{"usr/bin/tool": HOST_ELF.read_bytes()}, {"usr/bin/other": b"#!/bin/sh\n"}]
    image = oci_layout(tmp_path / "layout", layers, "linux/arm/v6", gzip_layers=False)
    report = verify_artifacts([image])
    assert {(f.path, f.rule) for f in report.errors} == {
        (f"{image}!usr/bin/tool", "elf.machine"),
        (f"{image}!usr/bin/tool", "elf.class"),
    }


def test_a_docker_save_archive_inside_a_tree_is_opened(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    docker_save_archive(tree / "img.tar", [{"bin/x": HOST_ELF.read_bytes()}], "linux/arm/v6")
    report = verify_artifacts([tree])
    assert {f.path for f in report.errors} == {f"{tree}/img.tar!bin/x"}


def test_a_layer_the_image_does_not_hold_is_a_user_error(tmp_path):
    image = oci_layout(tmp_path / "layout", [{"a": b"a"}], "linux/arm/v6")
    for blob in (image / "blobs" / "sha256").iterdir():
        if blob.read_bytes()[:2] == b"\x1f\x8b":
            blob.unlink()
    with pytest.raises(UserError, match="which it does not hold"):
        verify_artifacts([image])


def test_a_buildkit_manifest_is_not_mistaken_for_an_image(tmp_path):
    tree = tmp_path / "out"
    tree.mkdir()
    (tree / "manifest.json").write_text('{"name": "demo", "files": []}')
    with open_artifact(tree) as walked:
        assert walked.platform is None and walked.files == ("manifest.json",)


def test_archives_inside_an_input_share_one_byte_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("BUILDKIT_MAX_EXTRACT", "300K")
    tree = tmp_path / "tree"
    tree.mkdir()
    for name in ("a.tar", "b.tar", "c.tar"):
        (tree / name).write_bytes(layer_tar({"data": bytes(120 << 10)}))
    report = verify_artifacts([tree])
    limited = [f for f in report.errors if f.rule == "walk.limits"]
    assert [f.path for f in limited] == [f"{tree}/c.tar"]
    assert limited[0].evidence["limit"] == 300 << 10 and limited[0].evidence["bytes"] > 300 << 10
