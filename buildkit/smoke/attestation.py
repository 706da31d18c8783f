"""Remote attestation, emulated: the overlay's agent (rootfs/features/attest/) in the device's
namespace, `buildkit verifier serve` in the client's one at the recipe's verifier address (so the
device reaches it only through its firewall's declared egress), a scratch card with the device's
identity key, and a scratch registry that enrols it. The agent runs with the device's userland, ARM
binaries from Debian armel (busybox, minisign) emulated as the Pi's ARM1176 by qemu-arm.

The recipe names its verifier's public key, whose secret key smoke does not have: smoke signs the
verdicts with a throwaway key and points the agent at its public key (BK_VERIFIER_PUB). The tests
(tests/integration/test_attest_device.py) package with a verifier key of their own and leave the
overlay's key in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from buildkit import layout, sign
from buildkit.attest.store import Store, reports
from buildkit.context import working_cache_dir
from buildkit.device import card_files
from buildkit.host import QEMU_CPU_ENV, register_qemu_arm
from buildkit.registry import NewDevice, open_registry
from buildkit.smoke.device import HOST_PATH, Device, ScriptRun
from buildkit.smoke.netns import CLIENT_ADDR, NETNS_DIR, Netns, NetnsClient
from buildkit.smoke.results import CheckFailed, last_line
from buildkit.smoke.system.debian import PrivateApt, download, extract
from buildkit.toolchain import require_tool

AGENT_SCRIPT = "usr/libexec/buildkit/attest"
ATTEST_CONF = "etc/buildkit/attest.conf"
QUARANTINE_MARKER = "run/buildkit/attest/quarantined"
START_BOUND = 30.0
# Stand-ins for the Alpine boot files, which a package does not hold: the agent hashes whatever is there.
PLACEHOLDER_BOOT_FILES = ("config.txt", "cmdline.txt", "usercfg.txt")
# The agent's userland on the device (Alpine's busybox and minisign), as Debian armel builds them.
ARM_AGENT_PACKAGES = ("busybox-static", "minisign", "libsodium23", "libc6")
QEMU_LD_PREFIX = "QEMU_LD_PREFIX"
ARM_CACHE = "attest-arm"  # under the buildkit cache


@dataclass(frozen=True)
class AttestConfig:
    """The overlay's etc/buildkit/attest.conf, as the agent sources it."""

    hostname: str
    url: str
    address: str
    port: int
    identity: str  # card-relative
    files: tuple[str, ...]

    @classmethod
    def read(cls, root: Path) -> AttestConfig:
        conf = root / ATTEST_CONF
        shell = subprocess.run(
            ["busybox", "sh", "-c", 'set -a && . "$1" && exec env -0', "sh", str(conf)],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        )
        values = dict(item.partition("=")[::2] for item in shell.stdout.split("\0") if "=" in item)
        try:
            url = values["BK_ATTEST_URL"]
            host_port = url.split("://", 1)[1]
            address, _, port = host_port.rpartition(":")
            return cls(
                values["BK_ATTEST_HOST"],
                url,
                address.strip("[]"),
                int(port),
                values["BK_ATTEST_IDENTITY"],
                tuple(values["BK_ATTEST_FILES"].split()),
            )
        except (KeyError, ValueError, IndexError):
            raise CheckFailed(f"/{ATTEST_CONF}: {last_line(shell.stderr) or 'incomplete'}") from None


def prepare_card(out_dir: Path, media: Path, config: AttestConfig) -> sign.PublicKey:
    """A scratch SD card: the package, placeholder boot files, and a fresh identity key."""
    shutil.copytree(out_dir, media, ignore=shutil.ignore_patterns("payload", layout.DEVICES_DIR))
    for path in (*config.files, *PLACEHOLDER_BOOT_FILES):
        target = media / path
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(f"placeholder for {path}\n")
    key_path = media / config.identity
    key_path.parent.mkdir(parents=True, exist_ok=True)
    return sign.keygen(key_path, key_path.with_name(layout.IDENTITY_PUB), passphrase=None, comment=config.hostname)


def enrol(registry_url: str, hostname: str, identity: sign.PublicKey, media: Path) -> None:
    """The device in the registry, provisioned with the package's manifest and every file of its
    card, as `buildkit package --device` and `buildkit image --device` record them: the verifier
    then trusts no file on first use."""
    manifest = (media / layout.MANIFEST).read_bytes()
    with open_registry(registry_url) as registry:
        registry.add_device(
            NewDevice(
                hostname=hostname,
                public_key=identity.to_text(hostname),
                key_id=identity.key_id,
                fingerprint=hashlib.sha256(identity.key.public_bytes_raw()).hexdigest(),
            ),
            actor="smoke",
        )
        registry.record_provisioning(
            hostname,
            "smoke",
            "0",
            hashlib.sha256(manifest).hexdigest(),
            identity.key_id,
            card_files(media, ()),
            actor="smoke",
        )


def route_verifier(net: Netns, address: str) -> None:
    """The verifier's address answered by the client namespace, and routed there from the device."""
    for argv in (
        ["ip", "-n", net.client, "addr", "add", f"{address}/32", "dev", "lo"],
        ["ip", "-n", net.device, "route", "add", address, "via", CLIENT_ADDR],
    ):
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0 and "File exists" not in proc.stderr:
            raise CheckFailed(f"{' '.join(argv)}: {last_line(proc.stderr)}")


@dataclass(frozen=True)
class VerifierService:
    """`buildkit verifier serve` in a network namespace: what its arguments are, to start it again."""

    netns: str
    address: str
    port: int
    key: Path
    releases: tuple[Path, ...]
    store_url: str
    registry_url: str
    log: Path
    nonce_ttl: float = 60.0

    @contextlib.contextmanager
    def running(self) -> Iterator[subprocess.Popen[bytes]]:
        argv = [
            *("nsenter", f"--net={NETNS_DIR / self.netns}", "--"),
            *(sys.executable, "-m", "buildkit", "verifier", "serve", "--key", str(self.key)),
            *(arg for release in self.releases for arg in ("--release", str(release))),
            *("--store", self.store_url, "--registry", self.registry_url),
            *("--listen", f"{self.address}:{self.port}", "--nonce-ttl", str(self.nonce_ttl)),
        ]
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        try:
            self._wait_ready(proc)
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def client(self) -> NetnsClient:
        return NetnsClient(self.netns, f"{self.address}:{self.port}")

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        client = self.client()
        try:
            deadline = time.monotonic() + START_BOUND
            while True:
                if proc.poll() is not None:
                    raise CheckFailed(f"buildkit verifier serve exited {proc.returncode}: {self._log_tail()}")
                with contextlib.suppress(OSError):
                    if client.request("/api/devices", timeout=1)[0] == 200:
                        return
                if time.monotonic() > deadline:
                    raise CheckFailed(f"buildkit verifier serve did not answer within {START_BOUND:.0f}s")
                time.sleep(0.1)
        finally:
            client.close()

    def _log_tail(self) -> str:
        return last_line(self.log.read_text(errors="replace")) if self.log.exists() else "no output"


@dataclass(frozen=True)
class ArmUserland:
    """What the agent runs with on the device, from Debian armel: busybox (static) and minisign with
    its libraries, in a sysroot whose bin/ holds a link for every busybox applet. Run through
    binfmt_misc by qemu-arm, which QEMU_CPU makes an ARM1176 and QEMU_LD_PREFIX points at the sysroot
    for minisign's loader and libraries."""

    sysroot: Path

    @property
    def busybox(self) -> Path:
        return self.sysroot / "bin/busybox"

    def agent_environment(self) -> dict[str, str]:
        """PATH has only the ARM userland: a command the agent needs that it lacks fails rather than
        run on the host. nft and the payload's helper are the device's own services, not the agent's:
        the host's, the helper under the host's busybox as the payload's tests run it."""
        host_shell = ("/usr/bin/env", "-u", QEMU_LD_PREFIX, f"PATH={HOST_PATH}", str(require_tool("busybox")), "sh")
        return {
            "PATH": f"{self.sysroot / 'bin'}:{self.sysroot / 'usr/bin'}",
            QEMU_LD_PREFIX: str(self.sysroot),
            "BK_NFT": str(require_tool("nft")),
            "BK_SHELL": " ".join(host_shell),
        }


def arm_userland(cache: Path) -> ArmUserland:
    """The agent's ARM userland, fetched by package name and assembled once under `cache`."""
    apt = PrivateApt(cache / "apt")
    apt.run("apt-get", "update", "-qq")
    debs_dir = cache / "debs"
    debs_dir.mkdir(parents=True, exist_ok=True)
    debs = download(apt, ARM_AGENT_PACKAGES, debs_dir)
    key = hashlib.sha256("\n".join(deb.name for deb in debs).encode()).hexdigest()[:16]
    userland = ArmUserland(cache / f"sysroot-{key}")
    if not userland.sysroot.is_dir():
        partial = cache / f"sysroot-{key}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        for deb in debs:
            shutil.copytree(extract(deb, cache / "extracted"), partial, symlinks=True, dirs_exist_ok=True)
        (partial / ".complete").unlink()
        _link_applets(partial)
        partial.rename(userland.sysroot)
    return userland


def _link_applets(sysroot: Path) -> None:
    register_qemu_arm()
    busybox = sysroot / "bin/busybox"
    listed = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, env={QEMU_CPU_ENV: "arm1176"})
    if listed.returncode != 0:
        raise CheckFailed(f"the armel busybox does not run under qemu-arm: {last_line(listed.stderr)}")
    for applet in listed.stdout.split():
        link = sysroot / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")


def run_agent(
    device: Device, media: Path, userland: ArmUserland, overrides: dict[str, str], timeout: float = 60.0
) -> ScriptRun:
    """One round of the overlay's agent (`attest once`) in the device's namespace, every process of
    it an ARM binary of `userland` on the emulated ARM1176 (the card is a directory here, not a mount)."""
    env = {**device.environment(media), **userland.agent_environment(), "BK_REMOUNT": "no", **overrides}
    return device.run_in_netns(AGENT_SCRIPT, ("once",), env, timeout, shell=str(userland.busybox))


def quarantined(device: Device) -> bool:
    return (device.root / QUARANTINE_MARKER).exists()


def post(client: NetnsClient, url: str, body: bytes) -> tuple[int, bytes]:
    """POST `body` to `url` from the client's namespace: (status, body) for any HTTP answer."""
    return client.call(_post, url, body)


def _post(url: str, body: bytes) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(urllib.request.Request(url, data=body, method="POST"), timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def last_signed_report(store_url: str, hostname: str) -> bytes:
    """The last report the verifier accepted from `hostname`, as it came over the wire."""
    store = Store(store_url)
    try:
        with store.engine.connect() as conn:
            row = conn.execute(
                reports.select()
                .where(reports.c.hostname == hostname, reports.c.accepted.is_(True))
                .order_by(reports.c.id.desc())
                .limit(1)
            ).first()
    finally:
        store.close()
    if row is None:
        raise CheckFailed(f"the verifier accepted no report from {hostname}")
    return f"{row.body}\n{row.signature}".encode()


def last_decision(store_url: str, hostname: str) -> tuple[str, tuple[str, ...]]:
    store = Store(store_url)
    try:
        decision = store.last_decision(hostname)
    finally:
        store.close()
    if decision is None:
        raise CheckFailed(f"the verifier decided nothing for {hostname}")
    return decision.decision, decision.reasons


# --- the checks of `buildkit smoke` ------------------------------------------------------------

ATTEST_CHECKS = ("attest-allow", "attest-replay-refused", "attest-tampered-quarantined")


def has_agent(apkovl: Path) -> bool:
    """Whether the overlay carries the attest feature (its agent's configuration)."""
    with tarfile.open(apkovl, "r:gz") as tar:
        return ATTEST_CONF in tar.getnames()


@dataclass(frozen=True)
class AttestRun:
    """The verifier smoke runs for the device, and the scratch card the agent reads."""

    config: AttestConfig
    media: Path
    service: VerifierService
    userland: ArmUserland
    overrides: dict[str, str]


def check_attest_allow(
    device: Device, client: NetnsClient, out_dir: Path, net: Netns, scratch: Path, stack: contextlib.ExitStack
) -> tuple[str, AttestRun]:
    """A scratch card with a fresh identity, enrolled in a scratch registry; `buildkit verifier serve`
    at the recipe's verifier address; one round of the agent: the clean card is allowed."""
    config = AttestConfig.read(device.root)
    media = scratch / "attest-card"
    identity = prepare_card(out_dir, media, config)
    registry_url = f"sqlite:///{scratch}/attest-registry.sqlite"
    enrol(registry_url, config.hostname, identity, media)
    key = scratch / "attest-verifier.key"
    sign.keygen(key, key.with_suffix(".pub"), passphrase=None, comment="smoke verifier")
    route_verifier(net, config.address)
    service = VerifierService(
        net.client,
        config.address,
        config.port,
        key,
        (out_dir,),
        f"sqlite:///{scratch}/attest-store.sqlite",
        registry_url,
        scratch / "attest-verifier.log",
    )
    stack.enter_context(service.running())
    userland = arm_userland(working_cache_dir() / ARM_CACHE)
    run = AttestRun(config, media, service, userland, {"BK_VERIFIER_PUB": str(key.with_suffix(".pub"))})
    decision = _round(device, run)
    if decision != ("allow", ()):
        raise CheckFailed(f"the clean card got {decision[0]}: {'; '.join(decision[1])}")
    if client.connect(80, timeout=3.0) != "open":
        raise CheckFailed("allowed, but port 80 does not accept a connection")
    return (
        f"{config.hostname}'s agent (Debian armel busybox and minisign under qemu-arm -cpu arm1176) reported "
        f"{len(config.files)} boot-media hashes to {config.url} (through the declared egress), signed with its "
        "card's identity key; the verifier allowed it (verdict signed by a throwaway "
        "smoke key, given to the agent in BK_VERIFIER_PUB)"
    ), run


def check_attest_replay(run: AttestRun) -> str:
    replay = last_signed_report(run.service.store_url, run.config.hostname)
    client = run.service.client()
    try:
        status, body = post(client, f"{run.config.url}/report", replay)
    finally:
        client.close()
    if status != 403 or b"already used" not in body:
        raise CheckFailed(f"the verifier answered a replayed report with {status}: {last_line(body.decode())}")
    return "the same signed report sent again: refused (403, nonce already used)"


def check_attest_tampered(device: Device, client: NetnsClient, run: AttestRun, image: str, timeout: float) -> str:
    """The payload image changed on the card: quarantined (port 80 refuses, the payload stopped, the
    verifier still reached), then allowed again once the card is restored."""
    path = run.media / image
    original = path.read_bytes()
    try:
        path.write_bytes(original + b"smoke: tampered")
        decision = _round(device, run)
        if decision != ("quarantine", (f"mismatch: {image}",)):
            raise CheckFailed(f"a tampered {image} got {decision[0]}: {'; '.join(decision[1]) or 'no reason'}")
        if not quarantined(device) or device.sandbox_pid() is not None:
            raise CheckFailed("quarantined by the verifier, but the agent did not stop the payload")
        if (outcome := client.connect(80, timeout=3.0)) != "refused":
            raise CheckFailed(f"quarantined, but port 80 is {outcome}")
        if _round(device, run)[0] != "quarantine":
            raise CheckFailed("in quarantine the device no longer reaches its verifier")
    finally:
        path.write_bytes(original)
    if _round(device, run) != ("allow", ()):
        raise CheckFailed("the restored card was not allowed again")
    deadline = time.monotonic() + timeout
    while client.connect(80, timeout=2.0) != "open":
        if time.monotonic() > deadline:
            raise CheckFailed(f"allowed again, but port 80 is still closed {timeout:.0f}s later")
        time.sleep(0.2)
    return (
        f"{image} changed on the card: quarantined (mismatch: {image}), port 80 refused, payload stopped, "
        "the verifier still reached; restored: allowed, the firewall and the payload back"
    )


def _round(device: Device, run: AttestRun) -> tuple[str, tuple[str, ...]]:
    done = run_agent(device, run.media, run.userland, run.overrides)
    if done.returncode != 0:
        raise CheckFailed(f"attest once exited {done.returncode}: {last_line(done.output)}")
    return last_decision(run.service.store_url, run.config.hostname)
