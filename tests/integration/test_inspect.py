"""`buildkit inspect` on what `buildkit init` + `buildkit package` wrote (both kinds): sizes, gate,
signature and key id, services and firewall; its JSON is valid against inspect.schema.json; a
manifest that does not verify, or is signed by a key the overlay does not trust, is exit 1."""

from __future__ import annotations

import json
import shutil

import jsonschema

from buildkit import sign
from buildkit.layout import MANIFEST, PUBLIC_KEY
from buildkit.schemas import load_schema


def inspect_json(run_cli, out):
    result = run_cli("inspect", out, "--format", "json")
    return result, json.loads(result.stdout) if result.stdout.strip().startswith("{") else None


def test_report_is_valid_and_names_the_key_that_signed(initialised, run_cli):
    result, report = inspect_json(run_cli, initialised.out)
    assert result.returncode == 0, result.stderr
    jsonschema.validate(report, load_schema("inspect"))
    signature = report["signature"]
    assert signature["verified"] and signature["overlay_trusts_signer"]
    assert f"signing with key {signature['key_id']}" in initialised.package_stderr
    assert report["gate"]["verdict"] == "pass"
    name = f"demo-{initialised.kind}"
    assert name in report["services"]["default"] and "nftables" in report["services"]["boot"]
    assert {"proto": "tcp", "port": "80", "redirect_to": "8080"}.items() <= report["firewall"]["inbound"][0].items()
    assert any(row["port"] == "53" and "1.1.1.1" in row["addresses"] for row in report["firewall"]["outbound"])
    directories = report["sizes"]["directories"]
    assert [row["bytes"] for row in directories] == sorted((row["bytes"] for row in directories), reverse=True)
    manifest = json.loads((initialised.out / MANIFEST).read_text())
    assert report["payload"]["bytes"] == sum(e["size"] for e in manifest["payload"].values() if e["type"] == "file")


def test_go_binary_is_attributed_to_its_modules(initialised, run_cli):
    _, report = inspect_json(run_cli, initialised.out)
    modules = {row["name"]: row for row in report["sizes"]["go_modules"]}
    if initialised.kind == "python":
        assert modules == {} and report["gate"]["waivers"], "Debian armel's libatomic is waived"
        return
    assert set(modules) == {"std", "example.com/demo-go"}
    assert modules["std"]["bytes"] > modules["example.com/demo-go"]["bytes"] > 0
    assert modules["std"]["version"].startswith("go1.")
    assert all(waiver["findings"] >= 1 and waiver["reason"] for waiver in report["gate"]["waivers"])


def test_text_report_without_payload_dir_reads_the_image(initialised, run_cli, tmp_path):
    copy = tmp_path / "card"
    shutil.copytree(initialised.out, copy, ignore=shutil.ignore_patterns("payload"))
    _, from_image = inspect_json(run_cli, copy)
    _, from_tree = inspect_json(run_cli, initialised.out)
    assert from_image["sizes"] == from_tree["sizes"]
    text = run_cli("inspect", copy)
    assert text.returncode == 0 and "Gate: pass" in text.stdout and "Signature: valid" in text.stdout


def test_a_modified_manifest_is_exit_1(initialised, run_cli, tmp_path):
    copy = tmp_path / "tampered"
    shutil.copytree(initialised.out, copy)
    manifest = copy / MANIFEST
    manifest.write_text(manifest.read_text().replace('"version": "0.1.0"', '"version": "9.9.9"'))
    result, report = inspect_json(run_cli, copy)
    assert result.returncode == 1 and not report["signature"]["verified"]
    assert "NOT VERIFIED" in run_cli("inspect", copy).stdout


def test_a_manifest_signed_by_a_key_the_overlay_does_not_trust_is_exit_1(initialised, run_cli, tmp_path):
    copy = tmp_path / "resigned"
    shutil.copytree(initialised.out, copy)
    sign.keygen(tmp_path / "other.key", tmp_path / "other.pub", passphrase=None, comment="other")
    other = sign.load_secret_key(tmp_path / "other.key", None)
    sign.sign_file(copy / MANIFEST, other)
    shutil.copy(tmp_path / "other.pub", copy / PUBLIC_KEY)
    result, report = inspect_json(run_cli, copy)
    assert result.returncode == 1
    assert report["signature"]["verified"] and report["signature"]["key_id"] == other.key_id
    assert not report["signature"]["overlay_trusts_signer"]
    assert report["signature"]["overlay_key_id"] != other.key_id
