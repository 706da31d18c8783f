"""`buildkit verify artifact` through the real CLI on inputs made in Python: the exit codes and
one-line errors for damaged or missing inputs and bad profiles."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys

import pytest

from support.cli import no_traceback


def test_exit_1_for_a_damaged_elf(run_cli, tmp_path):
    (tmp_path / "broken").write_bytes(b"\x7fELF\x01\x01\x01" + b"\0" * 9 + b"\xff" * 30)
    proc = run_cli("verify", "artifact", tmp_path / "broken")
    assert proc.returncode == 1 and "elf.parse" in proc.stdout
    no_traceback(proc)


@pytest.mark.parametrize(
    "args, message",
    [
        (("verify", "artifact", "does-not-exist"), "does-not-exist: no such file or directory"),
        (("verify", "artifact", "--profile", "pi9", "."), "profile 'pi9': unknown"),
        (("verify", "artifact", "--waiver", "nowhere.toml", "."), "waiver file nowhere.toml: no such file"),
        (("verify", "artifact", "--format", "xml", "."), "argument --format: invalid choice: 'xml'"),
        (("verify", "artifact", "--closure", "some", "."), "argument --closure: invalid choice: 'some'"),
        (("verify", "artifact", "--bogus", "."), "unrecognized arguments: --bogus"),
        (
            (
                "verify",
                "artifact",
            ),
            "the following arguments are required: PATH",
        ),
    ],
)
def test_exit_2_with_one_line_for_bad_input(run_cli, args, message):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    no_traceback(proc)


def test_exit_2_for_a_corrupt_archive(run_cli, tmp_path):
    (tmp_path / "x.tar.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"junk" * 10)
    proc = run_cli("verify", "artifact", tmp_path / "x.tar.gz")
    assert proc.returncode == 2 and "x.tar.gz" in proc.stderr
    no_traceback(proc)


def test_exit_2_for_a_bad_profile_file(run_cli, repo_root, tmp_path):
    pi1 = (repo_root / "verify/profiles/pi1.toml").read_text()
    (tmp_path / "p.toml").write_text(pi1.replace("[go]", "[attributes.Tag_Bogus]\nallow = [0]\n\n[go]"))
    proc = run_cli("verify", "artifact", "--profile", tmp_path / "p.toml", ".")
    assert proc.returncode == 2 and "Tag_Bogus" in proc.stderr
    no_traceback(proc)


def test_a_waiver_that_matches_nothing_is_reported_as_unused(run_cli, tmp_path):
    """A non-ELF file gates clean; the recipe-style waiver given for it is a typo or stale: a warning."""
    (tmp_path / "notes.txt").write_text("no code here\n")
    waivers = tmp_path / "w.toml"
    waivers.write_text('[[waiver]]\nid = "typo"\nrule = "code.neno"\nreason = "r"\n')
    result = run_cli("verify", "artifact", tmp_path / "notes.txt", "--waiver", waivers, "--format", "json")
    assert result.returncode == 0, result.stderr
    unused = [f for f in json.loads(result.stdout)["findings"] if f["rule"] == "waiver.unused"]
    assert [f["evidence"]["waiver"] for f in unused] == ["typo"] and unused[0]["severity"] == "warning"


# What a run over plain files must not import: typer and its kin (the gate parses its own options),
# the archive formats' modules and subprocess (loaded where an archive or a tool is first needed).
# (lzma and bz2 are not listed: argparse's help formatter imports shutil, which imports both.)
NOT_FOR_PLAIN_FILES = (
    "typer",
    "click",
    "rich",
    "tarfile",
    "zipfile",
    "zstandard",
    "subprocess",
    "buildkit.walk.unpack",
    "buildkit.walk.image",
)


def test_the_gate_over_plain_files_loads_no_cli_framework_and_no_archive_module(tmp_path):
    """CI runs the gate most, over cached verdicts, where start-up is most of a run."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "notes.txt").write_text("no code here\n")
    (tree / "changelog.gz").write_bytes(gzip.compress(b"a compressed text, looked into\n"))
    program = (
        "import sys; from buildkit.cli import main\n"
        "main()\n"
        f"print(sorted(m for m in sys.modules if m in {NOT_FOR_PLAIN_FILES!r}), file=sys.stderr)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", program, "verify", "artifact", str(tree), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "BUILDKIT_CACHE": str(tmp_path / "cache")},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["objects"] == [] and proc.stderr.splitlines()[-1] == "[]"


def test_help_is_the_gate_parser_s_and_the_app_lists_the_command(run_cli):
    gate_help = run_cli("verify", "artifact", "--help")
    assert gate_help.returncode == 0
    for option in ("--profile", "--format", "--no-scan-code", "--waiver", "--closure", "--no-cache"):
        assert option in gate_help.stdout
    listing = run_cli("verify", "--help", env={"COLUMNS": "120"})
    assert listing.returncode == 0 and "artifact" in listing.stdout and "Gate artifacts" in listing.stdout
