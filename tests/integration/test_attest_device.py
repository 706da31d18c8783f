"""Remote attestation end to end, in network namespaces: hello-go (ARM, under qemu-arm -cpu arm1176)
booted from its package with the attest feature and its overlay's firewall in a "device" namespace;
`buildkit verifier serve` in the "client" namespace at the recipe's verifier address, enrolling from
a real registry. The overlay's own agent reports, run as on the device: by Debian armel's busybox
(sh, sha256sum, wget) and minisign, ARM binaries emulated as an ARM1176 by qemu-arm; a clean
card is allowed; a tampered payload image or overlay is quarantined, after which port 80 refuses
while the verifier still reaches the device; a restored card or an operator's approval brings it
back. Replays, reused and expired nonces, another device's key and a counter that goes back are
rejected; a restart of the verifier loses no record."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from buildkit import sign
from buildkit.attest.report import Report
from buildkit.attest.store import Store, reports
from buildkit.build.stage import BuildResult
from buildkit.context import build_context, cache_dir, project_root
from buildkit.host import register_qemu_arm, require_qemu_arm
from buildkit.package import PackageResult, package_build
from buildkit.recipe import load_recipe
from buildkit.registry import open_registry
from buildkit.smoke.attestation import (
    ARM_CACHE,
    ArmUserland,
    AttestConfig,
    VerifierService,
    arm_userland,
    enrol,
    prepare_card,
    quarantined,
    route_verifier,
    run_agent,
)
from buildkit.smoke.checks import apply_ruleset, check_boot, wait_for_port_80
from buildkit.smoke.device import RULESET, Device, PayloadConfig, place_payload_image, unpack_overlay
from buildkit.smoke.netns import DEVICE_ADDR, NetnsClient, network_namespaces

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
VERIFIER_ADDR, VERIFIER_PORT = "10.231.2.1", 8443
HOST = "hello-go"
IMAGE, APKOVL = "hello-go.squashfs", "hello-go.apkovl.tar.gz"
ATTEST_TABLES = f"""
[device]
features = ["attest"]

[attest]
verifier = "http://{VERIFIER_ADDR}:{VERIFIER_PORT}"
verifier_key = "@KEY@"
interval_s = 60
policy = "fail_closed"
grace_s = 30
"""


@pytest.fixture(scope="module")
def attested_package(tmp_path_factory, hello_go_build: BuildResult) -> tuple[PackageResult, Path]:
    """hello-go's gated payload packaged from a copy of its recipe with the attest feature; the
    verifier's secret key."""
    keys = tmp_path_factory.mktemp("verifier-key")
    public = sign.keygen(keys / "verifier.key", keys / "verifier.pub", passphrase=None)
    recipe_dir = tmp_path_factory.mktemp("attest-recipe") / "hello-go"
    shutil.copytree(REPO / "recipes/hello-go", recipe_dir, ignore=shutil.ignore_patterns("vendor"))
    with open(recipe_dir / "recipe.toml", "a") as recipe:
        recipe.write(ATTEST_TABLES.replace("@KEY@", public.to_base64()))
    ctx = build_context(load_recipe(recipe_dir), tmp_path_factory.mktemp("attest-out"))
    build = BuildResult(
        ctx, hello_go_build.payload_dir, hello_go_build.gate, hello_go_build.toolchain, hello_go_build.cache_key, True
    )
    signing = tmp_path_factory.mktemp("release-key")
    sign.keygen(signing / "r.key", signing / "r.pub", passphrase=None)
    package = package_build(build, sign.load_secret_key(signing / "r.key", passphrase=None))
    # The build stage's record, which smoke reads (the board, the [smoke] table: none, for time).
    info = json.loads((hello_go_build.ctx.out_dir / "build.json").read_text())
    (ctx.out_dir / "build.json").write_text(json.dumps({**info, "smoke": {}}))
    return package, keys / "verifier.key"


@dataclass
class Lab:
    device: Device
    media: Path
    client: NetnsClient
    verifier: VerifierService
    identity: sign.SecretKey
    store_url: str
    registry_url: str
    stack: contextlib.ExitStack
    uptime: Path
    userland: ArmUserland
    running_verifier: contextlib.ExitStack | None = None

    def start_verifier(self, nonce_ttl: float = 60.0) -> None:
        self.verifier = VerifierService(**{**self.verifier.__dict__, "nonce_ttl": nonce_ttl})
        self.running_verifier = contextlib.ExitStack()
        self.running_verifier.enter_context(self.verifier.running())

    def stop_verifier(self) -> None:
        if self.running_verifier is not None:
            self.running_verifier.close()
            self.running_verifier = None

    def agent(self) -> tuple[int, str]:
        done = run_agent(self.device, self.media, self.userland, {"BK_UPTIME_FILE": str(self.uptime)})
        return done.returncode, done.output

    def set_uptime(self, seconds: int) -> None:
        self.uptime.write_text(f"{seconds}.00 0.00\n")

    def post(self, body: bytes) -> tuple[int, bytes]:
        return self.verifier_client().request_body("/report", body)

    def nonce(self) -> str:
        status, body = self.verifier_client().request_body(f"/nonce?host={HOST}")
        assert status == 200, body
        return body.decode().strip()

    def verifier_client(self) -> VerifierHttp:
        return VerifierHttp(self.client, f"http://{VERIFIER_ADDR}:{VERIFIER_PORT}")


@dataclass(frozen=True)
class VerifierHttp:
    """HTTP to the verifier from the client namespace, from the verifier's own address."""

    client: NetnsClient
    base: str

    def request_body(self, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        return self.client.call(_http, self.base + path, body)


def _http(url: str, body: bytes | None) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    try:
        with opener.open(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _ping(source: str, dest: str, timeout: float = 1.0) -> bool:
    """An ICMP echo from `source` to `dest`: True when the reply comes (runs inside a namespace)."""
    with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as sock:
        sock.bind((source, 0))
        sock.settimeout(timeout)
        ident = os.getpid() & 0xFFFF
        header = struct.pack("!BBHHH", 8, 0, 0, ident, 1) + b"attest"
        checksum = _icmp_checksum(header)
        sock.sendto(struct.pack("!BBHHH", 8, 0, checksum, ident, 1) + b"attest", (dest, 0))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data, peer = sock.recvfrom(1024)
            except TimeoutError:
                return False
            if peer[0] == dest and data[20] == 0 and struct.unpack("!H", data[24:26])[0] == ident:
                return True
        return False


def _icmp_checksum(data: bytes) -> int:
    total = sum(struct.unpack(f"!{len(data) // 2}H", data[: len(data) // 2 * 2]))
    if len(data) % 2:
        total += data[-1] << 8
    total = (total >> 16) + (total & 0xFFFF)
    return ~(total + (total >> 16)) & 0xFFFF


@pytest.fixture(scope="module")
def lab(attested_package, tmp_path_factory) -> Iterator[Lab]:
    package, verifier_key = attested_package
    scratch = Path(tempfile_dir())
    stack = contextlib.ExitStack()
    try:
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        root, media = scratch / "root", scratch / "media"
        root.mkdir(mode=0o755)
        unpack_overlay(package.apkovl, root)
        config = PayloadConfig.read(root, "hello-go")
        attest = AttestConfig.read(root)
        identity_public = prepare_card(package.out_dir, media, attest)
        identity = sign.load_secret_key(media / attest.identity, passphrase=None)
        assert identity.key_id == identity_public.key_id
        registry_url = f"sqlite:///{scratch}/registry.sqlite"
        enrol(registry_url, HOST, identity_public, media)
        register_qemu_arm()
        net = stack.enter_context(network_namespaces(f"at{secrets.token_hex(2)}"))
        route_verifier(net, VERIFIER_ADDR)
        device = Device(root, media, net.device, config, package.recipe.target, scratch / "payload.log")
        stack.callback(device.force_stop)
        client = NetnsClient(net.client)
        stack.callback(client.close)
        place_payload_image(device, media / IMAGE, scratch, stack)
        apply_ruleset(root / RULESET, net.device)
        check_boot(device, 60)
        wait_for_port_80(client, device, 60)
        store_url = f"sqlite:///{scratch}/verifier.sqlite"
        service = VerifierService(
            net.client,
            VERIFIER_ADDR,
            VERIFIER_PORT,
            verifier_key,
            (package.out_dir,),
            store_url,
            registry_url,
            scratch / "verifier.log",
        )
        userland = arm_userland(cache_dir(project_root(REPO)) / ARM_CACHE)
        the_lab = Lab(
            device, media, client, service, identity, store_url, registry_url, stack, scratch / "uptime", userland
        )
        the_lab.set_uptime(100)
        the_lab.start_verifier()
        stack.callback(the_lab.stop_verifier)
        yield the_lab
    finally:
        stack.close()


def tempfile_dir() -> str:
    import tempfile

    path = tempfile.mkdtemp(prefix="buildkit-attest-", dir="/tmp")
    os.chmod(path, 0o755)  # the service user must reach the image mount and its secrets
    return path


def last_decision(lab: Lab) -> tuple[str, tuple[str, ...]]:
    store = Store(lab.store_url)
    try:
        decision = store.last_decision(HOST)
        assert decision is not None
        return decision.decision, decision.reasons
    finally:
        store.close()


def registry_state(lab: Lab) -> str:
    with open_registry(lab.registry_url) as registry:
        return registry.device(HOST).state


def signed_report(lab: Lab, key: sign.SecretKey, **changes: object) -> bytes:
    """A report as the device would send it (its last accepted one, with a fresh nonce), signed by `key`."""
    store = Store(lab.store_url)
    try:
        with store.transaction() as conn:
            last = store.last_accepted(conn, HOST)
        assert last is not None
        raw = json.loads(last.body)
    finally:
        store.close()
    fields = {
        "hostname": raw["hostname"],
        "nonce": lab.nonce(),
        "boot_id": raw["boot_id"],
        "boot_counter": raw["boot_counter"],
        "uptime_s": raw["uptime_s"] + 1,
        "payload": raw["payload"]["name"],
        "payload_running": raw["payload"]["running"],
        "files": raw["files"],
        **changes,
    }
    message = Report(**fields).to_bytes()  # type: ignore[arg-type]
    return message + b"\n" + sign.sign_bytes(message, key, "test").encode()


def test_clean_boot_is_allowed(lab: Lab) -> None:
    returncode, output = lab.agent()
    assert returncode == 0, output
    assert last_decision(lab) == ("allow", ())
    assert not quarantined(lab.device)
    assert lab.client.connect(80, timeout=3) == "open"
    assert registry_state(lab) == "active"
    counter = (lab.media / "buildkit/boot_counter").read_text().strip()
    assert counter == "1"


EM_ARM = 40
# What the agent runs (busybox applets and minisign), besides nft and the payload's helper.
AGENT_COMMANDS = ("sh", "sha256sum", "wget", "minisign", "timeout", "sort", "cat", "tr", "head", "tail")
PROBE = """#!{busybox} sh
{{ uname -m; readlink /proc/$$/exe; readlink /proc/$PPID/exe; tr '\\0' ' ' </proc/$PPID/cmdline; echo; }} >>"{log}"
exec wget "$@"
"""


def elf_machine(path: Path) -> int:
    header = path.read_bytes()[:20]
    assert header[:4] == b"\x7fELF", path
    return struct.unpack("<H", header[18:20])[0]


def test_the_agent_runs_on_the_emulated_arm1176(lab: Lab, tmp_path) -> None:
    """Every command the agent finds is an ARM binary, and a round runs on qemu-arm as an ARMv6 CPU:
    a probe standing in for wget (the agent calls it twice, for the nonce and the report) records
    the machine it sees and the program behind itself and behind the agent's shell."""
    path = lab.userland.agent_environment()["PATH"].split(":")
    for command in AGENT_COMMANDS:
        found = [Path(d) / command for d in path if (Path(d) / command).exists()]
        assert found, command
        assert elf_machine(found[0].resolve()) == EM_ARM, found[0]
    probe, log = tmp_path / "wget", tmp_path / "probe.log"
    probe.write_text(PROBE.format(busybox=lab.userland.busybox, log=log))
    probe.chmod(0o755)
    done = run_agent(lab.device, lab.media, lab.userland, {"BK_UPTIME_FILE": str(lab.uptime), "BK_WGET": str(probe)})
    assert done.returncode == 0, done.output
    assert last_decision(lab) == ("allow", ())
    lines = log.read_text().splitlines()
    assert len(lines) == 2 * 4, lines
    qemu = os.path.realpath(require_qemu_arm("the agent cannot run").interpreter or "")
    for machine, own_exe, agent_exe, agent_cmdline in zip(*[iter(lines)] * 4, strict=True):
        assert machine == "armv6l"
        assert own_exe == agent_exe == qemu
        # binfmt_misc's P flag: the interpreter, the ARM binary it runs, then the agent's own argv.
        assert agent_cmdline.split()[1] == str(lab.userland.busybox)
        assert agent_cmdline.split()[3:6] == ["sh", str(lab.device.root / "usr/libexec/buildkit/attest"), "once"]


def test_replays_and_forgeries_are_rejected(lab: Lab, tmp_path) -> None:
    lab.agent()
    store = Store(lab.store_url)
    last = store.last_report(HOST)
    store.close()
    assert last is not None and last.accepted
    with Store(lab.store_url).engine.connect() as conn:
        signature = conn.execute(reports.select().where(reports.c.id == last.id)).one().signature
    replay = last.body.encode() + b"\n" + signature.encode()
    status, body = lab.post(replay)
    assert status == 403 and b"already used" in body, body

    fresh = signed_report(lab, lab.identity)
    assert lab.post(fresh)[0] == 200
    reused = fresh.replace(b'"uptime_s":', b'"uptime_s":1', 1)  # another report, the same nonce
    reused_message = reused.split(b"\n", 1)[0]
    reused = reused_message + b"\n" + sign.sign_bytes(reused_message, lab.identity, "test").encode()
    status, body = lab.post(reused)
    assert status == 403 and b"already used" in body, body

    sign.keygen(tmp_path / "other.key", tmp_path / "other.pub", passphrase=None)
    other = sign.load_secret_key(tmp_path / "other.key", passphrase=None)
    status, body = lab.post(signed_report(lab, other))
    assert status == 403 and b"signature" in body, body

    current = json.loads(last.body)["boot_counter"]
    status, body = lab.post(signed_report(lab, lab.identity, boot_counter=current - 1))
    assert status == 409 and b"went back" in body, body
    status, body = lab.post(signed_report(lab, lab.identity, boot_id="0" * 36))
    assert status == 409 and b"did not advance" in body, body


def test_restart_keeps_every_record_and_nonces_expire(lab: Lab) -> None:
    before = _counts(lab)
    lab.stop_verifier()
    lab.start_verifier(nonce_ttl=1.0)
    try:
        assert _counts(lab) == before
        late = signed_report(lab, lab.identity)
        time.sleep(1.5)
        status, body = lab.post(late)
        assert status == 403 and b"expired" in body, body
        assert _counts(lab)["reports"] == before["reports"] + 1
    finally:
        lab.stop_verifier()
        lab.start_verifier()


def _counts(lab: Lab) -> dict[str, int]:
    store = Store(lab.store_url)
    try:
        return store.counts()
    finally:
        store.close()


@pytest.mark.parametrize("tampered", [IMAGE, APKOVL])
def test_tampered_card_is_quarantined_and_restored(lab: Lab, tampered: str) -> None:
    assert lab.agent()[0] == 0
    original = (lab.media / tampered).read_bytes()
    try:
        (lab.media / tampered).write_bytes(original + b"tampered")
        returncode, output = lab.agent()
        assert returncode == 0, output
        decision, reasons = last_decision(lab)
        assert (decision, reasons) == ("quarantine", (f"mismatch: {tampered}",))
        assert quarantined(lab.device)
        assert lab.device.sandbox_pid() is None  # the payload is stopped
        assert lab.client.connect(80, timeout=3) == "refused"
        assert registry_state(lab) == "quarantined"
        # The verifier still reaches the device, and the device the verifier: a report goes through.
        assert lab.client.call(_ping, VERIFIER_ADDR, DEVICE_ADDR)
        assert not lab.client.call(_ping, "10.231.0.2", DEVICE_ADDR)
        assert lab.agent()[0] == 0 and last_decision(lab)[0] == "quarantine"
    finally:
        (lab.media / tampered).write_bytes(original)
    returncode, output = lab.agent()
    assert returncode == 0, output
    assert last_decision(lab) == ("allow", ())
    assert not quarantined(lab.device)
    wait_for_port_80(lab.client, lab.device, 60)
    assert registry_state(lab) == "active"


def test_operator_approval_lifts_a_quarantine(lab: Lab) -> None:
    config = lab.media / "config.txt"
    config.write_text(config.read_text() + "# changed by the operator\n")
    assert lab.agent()[0] == 0
    assert last_decision(lab) == ("quarantine", ("mismatch: config.txt",))
    approved = subprocess.run(
        [sys.executable, "-m", "buildkit", "verifier", "approve", HOST, "--store", lab.store_url, "--format", "json"],
        capture_output=True,
        text=True,
    )
    assert approved.returncode == 0, approved.stderr
    assert json.loads(approved.stdout)["hostname"] == HOST
    assert lab.agent()[0] == 0
    assert last_decision(lab) == ("allow", ())
    wait_for_port_80(lab.client, lab.device, 60)


def test_fail_closed_after_the_grace_period(lab: Lab) -> None:
    lab.set_uptime(1000)
    assert lab.agent()[0] == 0  # a verdict at uptime 1000
    lab.stop_verifier()
    try:
        lab.set_uptime(1010)
        returncode, output = lab.agent()
        assert returncode == 1 and not quarantined(lab.device), output  # within the 30 s grace
        lab.set_uptime(1031)
        returncode, output = lab.agent()
        assert returncode == 1 and quarantined(lab.device), output
        assert "no valid verdict for 31s" in output
        assert lab.client.connect(80, timeout=3) == "refused"
    finally:
        lab.start_verifier()
    assert lab.agent()[0] == 0
    assert not quarantined(lab.device)
    wait_for_port_80(lab.client, lab.device, 60)


def test_a_verdict_not_signed_by_the_verifier_is_ignored(lab: Lab, tmp_path) -> None:
    sign.keygen(tmp_path / "rogue.key", tmp_path / "rogue.pub", passphrase=None)
    done = run_agent(
        lab.device,
        lab.media,
        lab.userland,
        {"BK_UPTIME_FILE": str(lab.uptime), "BK_VERIFIER_PUB": str(tmp_path / "rogue.pub")},
    )
    assert done.returncode == 1 and "not signed by the verifier's key" in done.output, done.output


def test_smoke_runs_the_attestation_checks(attested_package) -> None:
    """`buildkit smoke` on the package: its attestation checks after the declared ones, all passing."""
    from buildkit.smoke import smoke

    package, _ = attested_package
    result = smoke(package.out_dir)
    checks = {check.name: check for check in result.checks}
    for name in ("attest-allow", "attest-replay-refused", "attest-tampered-quarantined"):
        assert checks[name].ok, f"{name}: {checks[name].detail}"
    assert result.ok, [f"{c.name}: {c.detail}" for c in result.failed]
