"""What buildkit really writes matches the JSON Schemas it ships: gate reports that the console
script prints for cross-compiled ARM binaries (pass, violations, waived, closure, code scan), and the
manifest.json, build.json and gate.json of `buildkit package recipes/hello-go`. A mutated copy of
each real document is rejected, at the place that was changed, so these tests can fail."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from support.go import HELLO_GO, session_cache
from support.schemas import schema_errors

WAIVER = '[[waiver]]\nid = "legacy-v7"\nrule = "attr.*"\npath = "*"\nreason = "only started on the Pi 2 build"\n'


def gate_inputs(binaries: dict[str, Path], tmp: Path) -> dict[str, tuple[list[str], str]]:
    """Case name -> (arguments of `verify artifact`, a verdict, rule, rule family or severity the report holds)."""
    tree = tmp / "rootfs" / "usr" / "bin"
    tree.mkdir(parents=True)
    shutil.copy(binaries["armel-default"], tree / "prog")  # dynamic, without its libc: closure.missing
    (tmp / "waivers.toml").write_text(WAIVER)
    return {
        "compatible": ([str(binaries["armel-default"])], "pass"),
        "armv7": ([str(binaries["armel-armv7a"]), str(binaries["aarch64"])], "elf.machine"),
        "waived": ([str(binaries["armel-armv7a"]), "--waiver", str(tmp / "waivers.toml")], "waived"),
        "tree": ([str(tmp / "rootfs"), "--closure", "strict"], "closure.missing"),
        "code scan": ([str(binaries["armel-neon"]), "--scan-code"], "code.*"),
    }


@pytest.fixture(scope="module")
def gate_reports(gate_c_binaries, buildkit_cli, tmp_path_factory) -> dict[str, dict[str, Any]]:
    """The JSON report the console script prints for each case of `gate_inputs`."""
    reports = {}
    for case, (args, expected) in gate_inputs(gate_c_binaries, tmp_path_factory.mktemp("gate-inputs")).items():
        proc = subprocess.run(
            [*buildkit_cli, "verify", "artifact", "--format", "json", *args],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode in (0, 1), proc.stderr
        report = json.loads(proc.stdout)
        held = {report["verdict"]} | {
            value for f in report["findings"] for value in (f["rule"], f["rule"].split(".")[0] + ".*", f["severity"])
        }
        assert expected in held, (case, held)  # the case exercises what it is named for
        reports[case] = report
    return reports


@pytest.fixture(scope="module")
def hello_go_package(hello_go_build, buildkit_cli, tmp_path_factory) -> Path:
    """`buildkit package recipes/hello-go` in a fresh directory (development key), on the session's Go cache."""
    work = tmp_path_factory.mktemp("package-hello-go")
    env = {
        **os.environ,
        "BUILDKIT_CACHE": str(session_cache(hello_go_build)),
        "BUILDKIT_KEY": "",
        "SOURCE_DATE_EPOCH": "",
    }
    proc = subprocess.run(
        [*buildkit_cli, "package", str(HELLO_GO), "--out", "out"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    return work / "out"


@pytest.fixture(scope="module")
def package_documents(hello_go_package) -> dict[str, dict[str, Any]]:
    """Schema name -> the real document of that kind in the package's output directory."""
    files = {"manifest": "manifest.json", "build": "build.json", "gate-report": "gate.json"}
    return {name: json.loads((hello_go_package / file).read_text()) for name, file in files.items()}


@pytest.mark.parametrize("case", ["compatible", "armv7", "waived", "tree", "code scan"])
def test_gate_reports_of_real_binaries_match_the_schema(gate_reports, case):
    assert schema_errors("gate-report", gate_reports[case]) == []


@pytest.mark.parametrize("name", ["manifest", "build", "gate-report"])
def test_hello_go_package_outputs_match_their_schemas(package_documents, name):
    assert schema_errors(name, package_documents[name]) == []


def test_the_hello_go_gate_report_describes_a_go_binary(package_documents):
    (binary,) = [o for o in package_documents["gate-report"]["objects"] if o["path"].endswith("app/hello-go")]
    assert binary["goarm"] == "6" and "go" in binary["checks"]  # the Go fields were validated non-null


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A mutation: set the value at a '/'-separated path (list indexes as numbers)."""
    *parents, last = path.split("/")

    def mutate(doc: dict[str, Any]) -> None:
        for key in parents:
            doc = doc[int(key)] if isinstance(doc, list) else doc[key]
        doc[last] = value

    return mutate


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda doc: doc.pop(key)


def _first_payload_file(doc: dict[str, Any]) -> str:
    return next(path for path, entry in sorted(doc["payload"].items()) if entry["type"] == "file")


def _upper_case_payload_digest(doc: dict[str, Any]) -> None:
    entry = doc["payload"][_first_payload_file(doc)]
    entry["sha256"] = entry["sha256"].upper()


# Schema name, mutation, where the validator must complain (prefix of the error line).
MUTATIONS = {
    "gate report without a verdict": ("gate-report", _drop("verdict"), "(root): 'verdict' is a required property"),
    "gate report with an unknown key": ("gate-report", _set("colour", "red"), "(root): Additional properties"),
    "gate report object digest not hex": ("gate-report", _set("objects/0/sha256", "z" * 64), "objects/0/sha256:"),
    "gate report negative count": ("gate-report", _set("summary/errors", -1), "summary/errors:"),
    "gate report unknown severity": ("gate-report", _set("findings/0/severity", "fatal"), "findings/0/severity:"),
    "manifest without the image": ("manifest", _drop("image"), "(root): 'image' is a required property"),
    "manifest payload digest upper case": ("manifest", _upper_case_payload_digest, "payload/"),
    "manifest apkovl size as text": ("manifest", _set("apkovl/size", "12"), "apkovl/size:"),
    "manifest target not an object": ("manifest", _set("target", "pi1"), "target:"),
    "build without a cache key": ("build", _drop("cache_key"), "(root): 'cache_key' is a required property"),
    "build cache key truncated": ("build", _set("cache_key", "ab" * 16), "cache_key:"),
    "build smoke not an object": ("build", _set("smoke", ["/api/health"]), "smoke:"),
}


@pytest.mark.parametrize("case", MUTATIONS)
def test_a_mutated_real_document_is_rejected(package_documents, gate_reports, case):
    name, mutate, where = MUTATIONS[case]
    # The violation report has findings to mutate; the package's documents are the rest.
    original = gate_reports["armv7"] if name == "gate-report" else package_documents[name]
    document = copy.deepcopy(original)
    mutate(document)
    errors = schema_errors(name, document)
    assert any(line.startswith(where) for line in errors), errors
