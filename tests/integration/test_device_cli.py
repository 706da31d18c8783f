"""`buildkit device add` and `buildkit package recipes/hello-go --device HOST` end to end, as a user runs
them in a project: two devices from one recipe get different identities and secrets, the same
payload bytes, registry rows that match their card files, identity keys the real minisign signs
with; no secret of a device appears anywhere but in its own card files (and the build host's
state directory that keeps them); revoked devices and reused serials are refused."""

from __future__ import annotations

import base64
import gzip
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from buildkit import layout
from buildkit.fsutil import sha256_file
from buildkit.registry import open_registry
from buildkit.sign import key_id_text, parse_signature
from support import require_tools
from support.go import HELLO_GO, session_cache
from support.minisign import minisign
from support.postgres import fresh_database

pytestmark = pytest.mark.slow  # builds hello-go once per session (shared with the other hello-go tests)

SHARED = ("hello-go.apkovl.tar.gz", "hello-go.squashfs", "manifest.json", "manifest.json.minisig")
FILE_TOKEN = "token-from-a-file-7f3a9c\n"


class Project:
    """A copy of hello-go in a project of its own; every command's output kept for the leak scan."""

    def __init__(self, root: Path, buildkit_cli: list[str], cache: Path) -> None:
        self.root, self.cli, self.logs = root, buildkit_cli, []
        shutil.copytree(HELLO_GO, root / "recipes" / "hello-go")
        self.env = {**os.environ, "BUILDKIT_CACHE": str(cache), "BUILDKIT_KEY": "", "SOURCE_DATE_EPOCH": ""}
        for name in ("BUILDKIT_REGISTRY", "BUILDKIT_DEVICE_DIR"):
            self.env.pop(name, None)

    def run(self, *args: object) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [*self.cli, *map(str, args)], cwd=self.root, capture_output=True, text=True, env=self.env, timeout=900
        )
        assert "Traceback" not in result.stderr, result.stderr
        self.logs.append(result.stdout + result.stderr)
        return result

    def ok(self, *args: object) -> subprocess.CompletedProcess:
        result = self.run(*args)
        assert result.returncode == 0, result.stderr
        return result

    @property
    def registry_url(self) -> str:
        return f"sqlite:///{self.root / '.buildkit/registry.sqlite'}"

    def card(self, out: str, host: str) -> Path:
        return self.root / out / layout.device_card_dir(host)


@pytest.fixture(scope="module")
def project(tmp_path_factory, buildkit_cli, hello_go_build) -> Project:
    project = Project(tmp_path_factory.mktemp("fleet"), buildkit_cli, session_cache(hello_go_build))
    token_file = project.root / "token.txt"
    token_file.write_text(FILE_TOKEN)
    project.ok("device", "add", "web1", "--serial", "00000000ABCDEF01", "--mac", "B8:27:EB:AB:CD:01",
               "--recipe", "recipes/hello-go", "--secret", f"debug_token={token_file}")  # fmt: skip
    token_file.unlink()
    project.ok("device", "add", "web2", "--serial", "00000000abcdef02")
    project.ok("package", "recipes/hello-go", "--device", "web1", "--out", "out1")
    project.ok("package", "recipes/hello-go", "--device", "web2", "--out", "out2")
    project.ok("device", "export", "-o", "export.json")
    return project


def identity(card: Path) -> Path:
    return card / layout.card_identity_key("hello-go")


def secret_needles(state_dir: Path) -> dict[str, bytes]:
    """What would give a device's secrets away: the key file's base64 line, the raw Ed25519 seed (and
    in hex and base64), each secret's value."""
    key_line = (state_dir / layout.IDENTITY_KEY).read_text().splitlines()[1]
    seed = base64.b64decode(key_line)[54 + 8 : 54 + 8 + 32]  # header, keynum, then seed || pk
    needles = {"key file": key_line.encode(), "seed": seed, "seed hex": seed.hex().encode()}
    needles["seed base64"] = base64.b64encode(seed).rstrip(b"=")
    for secret in sorted((state_dir / "secrets").iterdir()):
        needles[f"secret {secret.name}"] = secret.read_bytes().strip()
    return needles


def readable_contents(root: Path, scratch: Path) -> dict[str, bytes]:
    """Every file below `root` by relative path; gzip members and squashfs images also unpacked."""
    found: dict[str, bytes] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = path.relative_to(root).as_posix()
        data = path.read_bytes()
        found[rel] = data
        if data[:2] == b"\x1f\x8b":
            found[f"{rel} (gunzipped)"] = gzip.decompress(data)
        if path.suffix == ".squashfs":
            unpacked = scratch / rel.replace("/", "_")
            subprocess.run(["unsquashfs", "-q", "-n", "-d", str(unpacked), str(path)], check=True, capture_output=True)
            for inner in (p for p in unpacked.rglob("*") if p.is_file() and not p.is_symlink()):
                found[f"{rel}:{inner.relative_to(unpacked)}"] = inner.read_bytes()
    return found


def test_two_devices_have_their_own_identity_and_secrets(project):
    cards = {host: project.card(out, host) for host, out in (("web1", "out1"), ("web2", "out2"))}
    keys = {host: identity(card).read_bytes() for host, card in cards.items()}
    tokens = {host: (card / "secrets/hello-go/debug_token").read_bytes() for host, card in cards.items()}
    assert keys["web1"] != keys["web2"] and tokens["web1"] != tokens["web2"]
    assert tokens["web1"] == FILE_TOKEN.encode()  # --secret: copied as given
    assert len(tokens["web2"].strip()) >= 43  # random: 256 bits, URL-safe base64
    with open_registry(project.registry_url) as registry:
        records = {r.hostname: r for r in registry.devices()}
    assert records["web1"].key_id != records["web2"].key_id
    assert records["web1"].serial == "00000000abcdef01" and records["web1"].macs == ("b8:27:eb:ab:cd:01",)
    for host, card in cards.items():
        assert (identity(card).with_name(layout.IDENTITY_PUB)).read_text() == records[host].public_key
        assert identity(card).stat().st_mode & 0o777 == 0o600 and card.stat().st_mode & 0o777 == 0o700


def test_both_cards_share_the_same_payload_bytes(project):
    for name in SHARED:
        assert (project.root / "out1" / name).read_bytes() == (project.root / "out2" / name).read_bytes(), name


def test_the_registry_holds_the_hash_of_every_file_on_each_card(project):
    with open_registry(project.registry_url) as registry:
        for host, out in (("web1", "out1"), ("web2", "out2")):
            record = registry.device(host)
            card = project.card(out, host)
            on_card = {p.relative_to(card).as_posix(): p for p in card.rglob("*") if p.is_file()}
            on_card.update({name: project.root / out / name for name in SHARED})
            assert set(record.card_files) == set(on_card)
            for path, sha256 in record.card_files.items():
                assert sha256_file(on_card[path]) == sha256, path
            manifest = (project.root / out / "manifest.json").read_bytes()
            assert record.manifest_sha256 == sha256_file(project.root / out / "manifest.json") != ""
            assert record.recipe_name == "hello-go" and record.recipe_version == json.loads(manifest)["version"]
            signature = parse_signature((project.root / out / layout.SIGNATURE).read_text())
            assert record.signing_key_id == key_id_text(signature.keynum)


def test_the_card_identity_signs_with_stock_minisign_and_the_registry_key_verifies(project, tmp_path):
    require_tools("minisign")
    with open_registry(project.registry_url) as registry:
        record = registry.device("web1")
    challenge = tmp_path / "nonce"
    challenge.write_bytes(os.urandom(32))
    signed = minisign("-S", "-s", identity(project.card("out1", "web1")), "-m", challenge, "-t", "attest web1")
    assert signed.returncode == 0, signed.stderr  # unencrypted: no password asked
    registry_pub = tmp_path / "web1.pub"
    registry_pub.write_text(record.public_key)
    verified = minisign("-V", "-p", registry_pub, "-m", challenge)
    assert verified.returncode == 0 and "attest web1" in verified.stdout, verified.stderr
    assert record.key_id in registry_pub.read_text()
    other = tmp_path / "web2.pub"
    other.write_bytes(identity(project.card("out2", "web2")).with_name(layout.IDENTITY_PUB).read_bytes())
    assert minisign("-V", "-p", other, "-m", challenge).returncode != 0


def test_no_device_secret_appears_outside_its_own_card(project, tmp_path):
    state = project.root / ".buildkit" / "devices"
    contents = readable_contents(project.root, tmp_path)
    logs = "\n".join(project.logs).encode()
    assert any(name.startswith("out1/hello-go.squashfs:") for name in contents)  # the image was looked into
    for host, out in (("web1", "out1"), ("web2", "out2")):
        own_card = f"{out}/{layout.device_card_dir(host).as_posix()}/"
        keeping = f".buildkit/devices/{host}/"  # the build host's copy (module docstring of buildkit.device)
        for what, needle in secret_needles(state / host).items():
            holders = sorted(name for name, data in contents.items() if needle in data)
            if what == "key file" or what.startswith("secret "):  # the card files hold these as they are
                assert any(h.startswith(own_card) for h in holders), f"{host} {what}: not even on its own card"
            assert all(h.startswith((own_card, keeping)) for h in holders), f"{host} {what} leaked into {holders}"
            assert needle not in logs, f"{host} {what} in a command's output"


def test_the_export_is_the_registry_as_json(project):
    exported = json.loads((project.root / "export.json").read_text())
    assert [d["hostname"] for d in exported["devices"]] == ["web1", "web2"]
    web1 = exported["devices"][0]
    with open_registry(project.registry_url) as registry:
        assert {f["path"]: f["sha256"] for f in web1["provisionings"][-1]["card_files"]} == dict(
            registry.device("web1").card_files
        )
    assert not list((project.root).glob(".export.json.*"))  # written through a temporary file


def test_list_and_show_in_json(project):
    listed = json.loads(project.ok("device", "list", "--format", "json").stdout)
    assert [(d["hostname"], d["state"]) for d in listed] == [("web1", "provisioned"), ("web2", "provisioned")]
    shown = json.loads(project.ok("device", "show", "web2", "--format", "json").stdout)
    assert shown["provisioning"]["recipe"] == {"name": "hello-go", "version": "1.0.0"}
    assert [c["to"] for c in shown["history"]] == ["provisioned"]
    text = project.ok("device", "show", "web1").stdout
    assert "secrets/hello-go/identity.key" in text and "serial: 00000000abcdef01" in text


def one_line_refusal(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("buildkit: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_revoked_devices_and_reused_serials_are_refused(project):
    project.ok("device", "add", "web3", "--serial", "3")
    revoked = project.ok("device", "revoke", "web3", "--reason", "card stolen")
    assert "revoked (card stolen)" in revoked.stdout
    assert not (project.root / ".buildkit/devices/web3").exists()  # its secret material is gone
    one_line_refusal(
        project.run("package", "recipes/hello-go", "--device", "web3", "--out", "out3"),
        "device web3 was revoked",
        "card stolen",
    )
    assert not (project.root / "out3").exists()  # refused before the build
    one_line_refusal(project.run("device", "add", "web3"), "device web3 was revoked", "never provisioned again")
    one_line_refusal(project.run("device", "add", "web4", "--serial", "00000000ABCDEF01"), "serial", "web1")
    one_line_refusal(project.run("device", "add", "web4", "--mac", "b8-27-eb-ab-cd-01"), "MAC", "web1")
    one_line_refusal(project.run("package", "recipes/hello-go", "--device", "web9"), "'web9' is not in the registry")
    one_line_refusal(project.run("device", "add", "Web_4"), "device hostname 'Web_4'")
    one_line_refusal(project.run("device", "add", "web4", "--secret", "debug_token=/etc/hostname"), "needs --recipe")
    one_line_refusal(
        project.run("device", "add", "web4", "--recipe", "recipes/hello-go", "--secret", "debug_token=/nonexistent"),
        "/nonexistent cannot be read",
    )
    one_line_refusal(
        project.run("device", "add", "web4", "--recipe", "recipes/hello-go", "--secret", "nope=/etc/hostname"),
        "declares no [secrets.nope]",
    )
    project.ok("device", "revoke", "web3", "--reason", "again")  # already revoked: no change, no new history
    history = json.loads(project.ok("device", "show", "web3", "--format", "json").stdout)["history"]
    assert [(c["to"], c["reason"]) for c in history] == [("provisioned", "added"), ("revoked", "card stolen")]


def test_a_dry_run_writes_nothing(tmp_path, buildkit_cli, hello_go_build):
    fresh = Project(tmp_path / "fresh", buildkit_cli, session_cache(hello_go_build))
    before = sorted(p.relative_to(fresh.root) for p in fresh.root.rglob("*"))
    result = fresh.ok("device", "add", "web1", "--serial", "1", "--recipe", "recipes/hello-go", "--dry-run",
                      "--format", "json")  # fmt: skip
    plan = json.loads(result.stdout)
    assert plan["dry_run"] and plan["record"]["serial"] == "1" and plan["secrets"] == {"debug_token": "random"}
    assert str(fresh.root / ".buildkit/devices/web1/identity.key") in plan["files"]
    assert sorted(p.relative_to(fresh.root) for p in fresh.root.rglob("*")) == before


def test_the_cli_on_a_postgresql_registry(tmp_path, buildkit_cli, hello_go_build, postgres_url):
    fresh = Project(tmp_path / "pg", buildkit_cli, session_cache(hello_go_build))
    fresh.env["BUILDKIT_REGISTRY"] = fresh_database(postgres_url)
    fresh.ok("device", "add", "pg1", "--serial", "p1", "--board-revision", "000E")
    one_line_refusal(fresh.run("device", "add", "pg2", "--serial", "P1"), "serial p1 is already recorded")
    listed = json.loads(fresh.ok("device", "list", "--format", "json").stdout)
    assert [(d["hostname"], d["board_revision"]) for d in listed] == [("pg1", "000e")]
    fresh.ok("device", "export", "-o", tmp_path / "audit.json")
    assert json.loads((tmp_path / "audit.json").read_text())["devices"][0]["serial"] == "p1"
    assert not (fresh.root / ".buildkit/registry.sqlite").exists()
