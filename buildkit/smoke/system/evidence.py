"""What the emulated Pi showed, judged: the agent's console facts (BKF KEY LINE, grouped by BKS
section markers with the guest's uptime), and what the host saw through the emulated network."""

from __future__ import annotations

import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from buildkit.recipe import Smoke
from buildkit.smoke.bounds import check_fork_bomb, check_tmpfs_full, tmpfs_problems_in
from buildkit.smoke.checks import undeclared_writable
from buildkit.smoke.device import STOP_BOUND, PayloadConfig
from buildkit.smoke.probes import declared_checks
from buildkit.smoke.procfs import parse_mountinfo
from buildkit.smoke.results import CheckFailed, CheckResult, snippet
from buildkit.smoke.system.agentlink import GuestDevice
from buildkit.smoke.system.qemu import Board

KERNEL_FILESYSTEMS = frozenset({"proc", "sysfs", "devpts", "mqueue", "devtmpfs"})
POLL_INTERVAL = 0.25  # as buildkit smoke's: well under the firewall's per-source rate of new connections
ANSWER_GRACE = 60  # s: an interpreter (hello-py's python3: 55 s measured) takes this long to listen on TCG
# The agent gives the service ANSWER_GRACE to answer before it reports; once it has, the host waits
# only for a request already on its way.
AFTER_REPORT_GRACE = 3.0
ANSWERED = "answered"  # what the host says on the console when the service first answered
IN_GUEST = (
    ("boot-media", "boot"),
    ("overlay-unpacked", "boot"),
    ("openrc", "openrc"),
    ("boot-gates", "openrc"),
    ("firewall", "firewall"),
    ("sandbox", "sandbox"),
    ("sandbox-limits", "sandbox"),
    ("seccomp-filter", "seccomp"),
    ("entropy", "entropy"),
    ("target-cpu", "cpu"),
)
FROM_HOST = ("port-80", "direct-port-closed")
# `buildkit smoke`'s own checks of the sandbox's bounds, with the agent as the intruder.
BOUNDS = (("tmpfs-full", check_tmpfs_full), ("fork-bomb", check_fork_bomb))
AFTER_HOST = (("clock-gate", "clock"), ("sigterm-stop", "sigterm"))
TAMPERED = "tampered-payload-refused"  # the second boot's


def plan(smoke: Smoke) -> tuple[str, ...]:
    """Every check of a `--system` run, in order: the recipe's declared checks run from the host."""
    return (
        *(name for name, _ in IN_GUEST),
        *FROM_HOST,
        *(name for name, _ in declared_checks(smoke)),
        *(name for name, _ in BOUNDS),
        *(name for name, _ in AFTER_HOST),
        TAMPERED,
    )


@dataclass
class Evidence:
    facts: dict[str, list[str]]
    sections: dict[str, float]  # section → guest uptime at its start
    markers: dict[str, list[str]]  # BKS WORD → the rest of each such line
    console: list[str]

    @classmethod
    def parse(cls, console: list[str]) -> Evidence:
        facts: dict[str, list[str]] = {}
        sections: dict[str, float] = {}
        markers: dict[str, list[str]] = {}
        for line in console:
            words = line.split(" ", 2)
            if words[0] == "BKF" and len(words) >= 2:
                facts.setdefault(words[1], []).append(words[2] if len(words) > 2 else "")
            elif words[0] == "BKS" and len(words) >= 2:
                rest = words[2] if len(words) > 2 else ""
                markers.setdefault(words[1], []).append(rest)
                if words[1] == "section" and len(rest.split()) == 2:
                    sections[rest.split()[0]] = float(rest.split()[1])
        return cls(facts, sections, markers, console)

    def text(self, key: str) -> str:
        return "\n".join(self.facts.get(key, []))

    def first(self, key: str) -> str:
        return next(iter(self.facts.get(key, [])), "").strip()

    def marker(self, word: str) -> str:
        return next(iter(self.markers.get(word, [])), "")

    def uptime(self, marker: str) -> float | None:
        rest = self.marker(marker).split()
        try:
            return float(rest[-1])
        except (IndexError, ValueError):
            return None

    def section_seconds(self, name: str) -> float:
        if name == "boot":
            start, end = self.uptime("booted"), self.uptime("overlay")
            return round(end - start, 3) if start is not None and end is not None else 0.0
        if name not in self.sections:
            return 0.0
        start = self.sections[name]
        later = [value for value in self.sections.values() if value > start]
        for word in ("waiting", "done"):
            if (value := self.uptime(word)) is not None and value > start:
                later.append(value)
        return round(min(later) - start, 3) if later else 0.0


@dataclass
class Host:
    """The host's side: HTTP through slirp's forwards, and the times it measured."""

    board: Board
    secret_values: dict[str, str]
    smoke: Smoke
    timeout: float
    reached_agent: bool = False
    finished: bool = False
    first_answer: float | None = None
    results: dict[str, CheckResult] = field(default_factory=dict)
    _answered: threading.Event = field(default_factory=threading.Event)

    def request(
        self, path: str, method: str = "GET", headers: dict[str, str] | None = None, timeout: float = 5.0, port: int = 0
    ) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{port or self.board.http_port}{path}"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(urllib.request.Request(url, method=method, headers=headers or {}), timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except urllib.error.URLError as exc:
            raise exc.reason if isinstance(exc.reason, OSError) else OSError(str(exc.reason)) from None

    def watch_first_answer(self) -> None:
        """Polls port 80 from qemu's start until anything answers: boot-to-first-answer."""

        def poll() -> None:
            while self.board.process.poll() is None and time.monotonic() - self.board.started < self.timeout:
                try:
                    self.request("/", timeout=2.0)
                except (OSError, ValueError):
                    time.sleep(POLL_INTERVAL)
                    continue
                self.first_answer = time.monotonic() - self.board.started
                self.board.send(ANSWERED)
                break
            self._answered.set()

        threading.Thread(target=poll, daemon=True).start()

    def run_service_checks(self, config: PayloadConfig) -> None:
        """From the host while the service runs: port 80, then `buildkit smoke`'s declared checks and
        its checks of the sandbox's bounds, with the agent doing what needs the guest."""
        self._record("port-80", self._check_port_80)
        self._record("direct-port-closed", partial(self._check_direct, config.port))
        device = GuestDevice(self.board, config, self.request, self.secret_values, self.timeout)
        checks: list[tuple[str, Callable[[GuestDevice], str]]] = [*declared_checks(self.smoke), *BOUNDS]
        for name, check in checks:
            if self.results["port-80"].ok:
                self._record(name, partial(check, device))
            else:  # nothing answers on :80: each check would only wait out its timeout
                self.results[name] = CheckResult(name, False, "not run: port-80 failed", 0.0)

    def _record(self, name: str, check: Callable[[], str]) -> None:
        started = time.monotonic()
        try:
            detail, ok = check(), True
        except CheckFailed as exc:
            detail, ok = str(exc), False
        except OSError as exc:
            detail, ok = f"no answer through the emulated network: {type(exc).__name__}: {exc}", False
        self.results[name] = CheckResult(name, ok, detail, round(time.monotonic() - started, 3))

    def _check_port_80(self) -> str:
        # The agent reports once the service has answered, or has had ANSWER_GRACE to: from then on,
        # a short grace, not the whole boot bound.
        self._answered.wait(AFTER_REPORT_GRACE)
        if self.first_answer is None:
            raise CheckFailed(
                f"nothing answered on the device's port 80 (host 127.0.0.1:{self.board.http_port}, through "
                f"slirp and the kernel's redirect) within {ANSWER_GRACE}s of the service's start"
            )
        status, body = self.request("/", timeout=5.0)
        return (
            f"GET / from the host through the emulated USB network to the device's :80 → {status} "
            f"{snippet(body, 60)} (first answer {self.first_answer:.1f}s after qemu started)"
        )

    def _check_direct(self, service_port: int) -> str:
        try:
            status, _ = self.request("/", timeout=3.0, port=self.board.service_port)
        except (OSError, ValueError) as exc:
            return f"the service port {service_port} asked directly: no answer ({type(exc).__name__})"
        raise CheckFailed(f"the service port {service_port} answered {status} directly: only :80 may reach it")

    def timings(self, evidence: Evidence) -> tuple[tuple[str, float], ...]:
        times = []
        if (booted := evidence.uptime("booted")) is not None:
            times.append(("kernel boot to /init (guest)", booted))
        if (waiting := evidence.uptime("waiting")) is not None:
            times.append(("kernel boot to services up and reported (guest)", waiting))
        if self.first_answer is not None:
            times.append(("qemu start to first answer on :80 (host)", self.first_answer))
        return tuple(times)


def judge(
    evidence: Evidence,
    host: Host,
    config: PayloadConfig,
    settings: dict[str, str],
    smoke: Smoke,
    probe: tuple[int, str],
) -> tuple[CheckResult, ...]:
    judges: dict[str, Callable[[], str]] = {
        "boot-media": partial(check_boot_media, evidence),
        "overlay-unpacked": partial(check_overlay, evidence),
        "openrc": partial(check_openrc, evidence, config),
        "boot-gates": partial(check_gates, evidence, config),
        "firewall": partial(check_firewall, evidence, config),
        "sandbox": partial(check_sandbox, evidence, config),
        "sandbox-limits": partial(check_limits, evidence, config),
        "seccomp-filter": partial(check_seccomp, evidence, probe),
        "entropy": partial(check_entropy, evidence),
        "target-cpu": partial(check_cpu, evidence),
        "clock-gate": partial(check_clock, evidence, settings),
        "sigterm-stop": partial(check_sigterm, evidence),
    }
    sections = dict((*IN_GUEST, *AFTER_HOST))
    results = []
    for name in plan(smoke):
        if name in host.results:
            results.append(host.results[name])
            continue
        if name not in judges:
            results.append(CheckResult(name, False, not_reached(evidence, host), 0.0))
            continue
        try:
            detail, ok = judges[name](), True
        except CheckFailed as exc:
            detail, ok = str(exc), False
        if not ok and not evidence.sections.get(sections[name]) and sections[name] != "boot":
            detail = f"{detail} ({not_reached(evidence, host)})"
        results.append(CheckResult(name, ok, detail, evidence.section_seconds(sections[name])))
    return tuple(results)


def not_reached(evidence: Evidence, host: Host) -> str:
    if failed := evidence.marker("stage1"):
        return f"not run: the initramfs stopped: {failed}"
    if not host.reached_agent:
        panic = next((line for line in evidence.console if "Kernel panic" in line), "")
        return f"not run: the guest did not report within the boot bound{f' ({panic.strip()})' if panic else ''}"
    return "not run: the agent stopped before it"


def check_boot_media(evidence: Evidence) -> str:
    media = evidence.marker("media").split()
    if len(media) != 3:
        raise CheckFailed(f"the initramfs found no boot media: {evidence.marker('stage1') or 'no report'}")
    return f"the initramfs found {media[0]}, mounted it read-only at {media[1]} and took {media[2].rsplit('/', 1)[-1]}"


def check_overlay(evidence: Evidence) -> str:
    overlay = evidence.marker("overlay").split()
    if not overlay:
        raise CheckFailed(f"the apkovl was not unpacked: {evidence.marker('stage1') or 'no report'}")
    skipped, stubs = evidence.markers.get("skipped", []), evidence.markers.get("stubbed", [])
    return (
        f"{overlay[0]} entries unpacked over a tmpfs root on top of the Debian armel userland; switch_root "
        f"to it; the Alpine services no Debian package provides (nothing to do in the emulator): skipped by "
        f"OpenRC, no script: {', '.join(skipped) or 'none'}; stubbed, as another service needs them: "
        f"{', '.join(stubs) or 'none'}"
    )


def check_openrc(evidence: Evidence, config: PayloadConfig) -> str:
    status = evidence.first("service")
    if "started" not in status:
        raise CheckFailed(f"rc-service {config.name} status: {status or 'no answer'}")
    order = [
        line.strip()
        for line in evidence.console
        if line.strip().startswith("*") and any(w in line for w in ("firewall", "usb0", f"Starting {config.name}"))
    ]
    firewall = next((i for i, line in enumerate(order) if "firewall" in line), None)
    network = next((i for i, line in enumerate(order) if "usb0" in line), None)
    payload = next((i for i, line in enumerate(order) if f"Starting {config.name}" in line), None)
    if None in (firewall, network, payload) or not firewall < network < payload:  # type: ignore[operator]
        raise CheckFailed(f"OpenRC's start order is not nftables, net, {config.name}: {' | '.join(order)}")
    return (
        f"OpenRC's openrc-run started /etc/init.d/{config.name} ({status}) after nftables and net, "
        f"as its depend() asks: {' → '.join(order)}"
    )


def exit_signal(evidence: Evidence, key: str = "exit") -> str:
    """'' while the payload runs; otherwise how it ended, a signal by its name."""
    status = evidence.first(key)
    if not status.isdigit():
        return ""
    code = int(status)
    if code > 128 and code - 128 in signal.Signals._value2member_map_:
        sig = signal.Signals(code - 128)
        why = {
            signal.SIGILL: ": an instruction the ARM1176 does not have (built for a newer ARM, e.g. GOARM=7?)",
            signal.SIGSYS: ": a syscall the seccomp filter kills",
        }.get(sig, "")
        return f"exit status {code}: killed by {sig.name} ({signal.strsignal(sig)}){why}"
    return f"exit status {code}"


def check_gates(evidence: Evidence, config: PayloadConfig) -> str:
    lines = [line.split(f"buildkit-{config.name}: ", 1)[-1] for line in evidence.facts.get("gates", [])]
    said = "; ".join(lines)
    for needed in ("entropy: kernel CRNG ready", "clock:", "integrity: manifest signature valid", "started"):
        if not any(needed in line for line in lines):
            raise CheckFailed(f"the boot gates did not all pass (no '{needed}'): {said or 'nothing logged'}")
    if ended := exit_signal(evidence):
        log = " | ".join(line.split(": ", 1)[-1] for line in evidence.facts.get("payload-log", [])[-3:])
        raise CheckFailed(f"the gates passed, then the payload died: {ended}; its output: {log or 'none'}")
    return said


def check_firewall(evidence: Evidence, config: PayloadConfig) -> str:
    ruleset = evidence.text("ruleset")
    modules = evidence.first("modules").split()
    problems = [
        message
        for broken, message in (
            ("nf_tables" not in modules, "the kernel has no nf_tables module loaded"),
            (f"redirect to :{config.port}" not in ruleset, f"no redirect to :{config.port} in the kernel's ruleset"),
            ("hook input priority filter; policy drop;" not in ruleset, "the input chain does not drop by default"),
        )
        if broken
    ]
    if problems:
        raise CheckFailed("; ".join(problems) + f" (tables: {tables(ruleset)})")
    nft_modules = sorted(m for m in modules if m.startswith(("nf", "nft")))
    return (
        f"the ARM kernel holds the overlay's ruleset ({tables(ruleset)}): tcp 80 redirected to :{config.port}, "
        f"input policy drop; netfilter modules loaded: {', '.join(nft_modules)}"
    )


def tables(ruleset: str) -> str:
    return ", ".join(
        line.removeprefix("table ").rstrip(" {") for line in ruleset.splitlines() if line.startswith("table ")
    )


def status_fields(evidence: Evidence, key: str) -> dict[str, str]:
    return {k: v.strip() for k, _, v in (line.partition(":") for line in evidence.facts.get(key, []))}


def check_sandbox(evidence: Evidence, config: PayloadConfig) -> str:
    status, tini = status_fields(evidence, "status"), status_fields(evidence, "tini-status")
    if not status:
        raise CheckFailed(f"no payload process under the sandbox's tini: {exit_signal(evidence) or 'not running'}")
    host_uid = int(status["Uid"].split()[1])
    inside = next(
        (
            int(a) + host_uid - int(b)
            for a, b, n in (row.split() for row in evidence.facts.get("uid-map", []))
            if int(b) <= host_uid < int(b) + int(n)
        ),
        -1,
    )
    namespaces = {line.split()[0]: line.split()[1:] for line in evidence.facts.get("ns", []) if len(line.split()) == 3}
    own = sorted(ns for ns, (init, payload) in namespaces.items() if init != payload)
    mounts = parse_mountinfo(evidence.text("mountinfo"))
    writable = {m.point for m in mounts if "rw" in m.options and m.fstype not in KERNEL_FILESYSTEMS}
    problems = [
        message
        for broken, message in (
            (
                tini.get("NSpid", "").split()[-1:] != ["1"],
                f"tini is not PID 1 of its namespace (NSpid {tini.get('NSpid')})",
            ),
            (inside != config.uid or inside == 0, f"runs as uid {inside} inside, expected {config.uid}"),
            (host_uid == 0, "runs as root as the kernel sees it"),
            (int(status.get("CapEff", "1"), 16) != 0, f"has capabilities (CapEff {status.get('CapEff')})"),
            (status.get("NoNewPrivs") != "1", "may gain privileges (NoNewPrivs 0)"),
            (status.get("Seccomp") != "2", f"no seccomp filter (Seccomp {status.get('Seccomp')})"),
            (
                own != sorted(set(namespaces) - {"net"}),
                f"namespaces of its own: {', '.join(own)} (expected all but net)",
            ),
            ("/" in writable, "its / is writable"),
        )
        if broken
    ] + undeclared_writable(writable, config.writable)
    if problems:
        raise CheckFailed(f"payload {evidence.first('comm')}: " + "; ".join(problems))
    return (
        f"{evidence.first('comm')} under tini (PID 1 of its pid namespace), as the ARM kernel sees it: uid "
        f"{inside} inside, {host_uid} outside, CapEff 0, NoNewPrivs 1, Seccomp 2 (filter); namespaces of its "
        f"own: {', '.join(own)}; / read-only; writable only {', '.join(sorted(writable))}"
    )


def check_limits(evidence: Evidence, config: PayloadConfig) -> str:
    limits = {
        line[:26].strip(): (line[26:47].strip(), line[47:68].strip()) for line in evidence.facts.get("limits", [])[1:]
    }
    if not limits:
        raise CheckFailed("no payload process to read the limits of")
    expected = dict(config.limits)
    nproc, nofile = str(expected["BK_LIMIT_NPROC"]), str(expected["BK_LIMIT_NOFILE"])
    address = str(expected["BK_LIMIT_AS_KB"] * 1024)
    problems = [
        f"{name} is {'/'.join(limits.get(name, ('?', '?')))} (soft/hard), expected {want}"
        for name, want in (
            ("Max processes", nproc),
            ("Max open files", nofile),
            ("Max core file size", "0"),
            ("Max address space", address),
        )
        if limits.get(name, ("", ""))[1] != want
    ] + tmpfs_problems_in(parse_mountinfo(evidence.text("mountinfo")), config.tmpfs)
    if problems:
        raise CheckFailed("; ".join(problems))
    sizes = ", ".join(f"{path} {size} MiB" for path, size in config.tmpfs)
    return (
        f"RLIMIT_NPROC {nproc}, RLIMIT_NOFILE {nofile}, no core dumps, address space {expected['BK_LIMIT_AS_KB']} KiB "
        f"(applied on the ARM kernel, unlike under user-mode qemu); tmpfs {sizes}; /dev read-only"
    )


def check_seccomp(evidence: Evidence, probe: tuple[int, str]) -> str:
    words = evidence.first("seccomp-probe").split()
    results = dict(zip(words[::2], words[1::2], strict=False))
    filtered, unfiltered = results.get("filtered"), results.get("unfiltered")
    if filtered != "1" or unfiltered != "0":
        raise CheckFailed(
            f"{probe[1]}() (ARM EABI {probe[0]}, outside the allow-list) as the service user in bwrap: "
            f"errno {filtered} with the overlay's filter, {unfiltered} without (expected EPERM = 1, and 0)"
        )
    return (
        f"the ARM kernel enforces the overlay's filter: {probe[1]}() (ARM EABI {probe[0]}, outside its allow-list) "
        f"fails with EPERM under it and succeeds without it (the smoke probe, as the service user in bwrap)"
    )


def check_entropy(evidence: Evidence) -> str:
    rng, sample = evidence.first("rng-current"), evidence.first("hwrng")
    gate = any("entropy: kernel CRNG ready" in line for line in evidence.facts.get("gates", []))
    if "rng" not in rng or len(sample) != 32 or not gate:
        raise CheckFailed(
            f"hw_random: {rng or 'none'}; /dev/hwrng gave {sample or 'nothing'}; entropy gate passed: {gate}"
        )
    return f"hw_random uses {rng} (the emulated BCM2835 RNG); /dev/hwrng gave 16 bytes; the entropy gate passed"


def check_cpu(evidence: Evidence) -> str:
    machine, model = evidence.first("uname"), evidence.first("cpuinfo").split(":", 1)[-1].strip()
    if machine != "armv6l":
        raise CheckFailed(f"uname -m is {machine or 'unknown'}, not armv6l")
    if ended := exit_signal(evidence):
        raise CheckFailed(f"the payload runs natively on the ARM1176 ({model}) and died: {ended}")
    return f"the payload runs natively on {model} ({machine}), no emulator in between"


def check_clock(evidence: Evidence, settings: dict[str, str]) -> str:
    said = evidence.text("clock-gate")
    refused = next((line for line in said.splitlines() if "REFUSED: clock" in line), "")
    if not refused:
        raise CheckFailed(f"with the clock a day before the build, the gates said: {said or 'nothing'}")
    return f"clock set a day before the build ({settings.get('BK_BUILD_EPOCH')}): {refused.split('REFUSED: ', 1)[-1]}"


def took_seconds(evidence: Evidence, key: str) -> float | None:
    """The guest seconds of a BKF KEY START END line; None without one."""
    took = evidence.first(key).split()
    return float(took[1]) - float(took[0]) if len(took) == 2 else None


def check_sigterm(evidence: Evidence) -> str:
    # rc-service's own start on the emulated CPU (openrc-run, its shell, the service script), as a
    # status query of the same service takes it, is not the payload's time to stop.
    total = took_seconds(evidence, "sigterm-took")
    openrc = took_seconds(evidence, "rc-service-took") or 0.0
    seconds = max(total - openrc, 0.0) if total is not None else -1.0
    exit_status, left = evidence.first("sigterm-exit"), evidence.first("sigterm-left")
    problems = [
        message
        for broken, message in (
            (evidence.first("sigterm-rc") != "0", f"rc-service stop exited {evidence.first('sigterm-rc') or '?'}"),
            (exit_status not in ("0", str(128 + signal.SIGTERM)), f"exit status {exit_status or 'unknown'}"),
            (left not in ("0", ""), f"{left} sandbox process(es) left"),
            (not 0 <= seconds <= STOP_BOUND, f"took {seconds:.1f}s (bound {STOP_BOUND:.0f}s)"),
        )
        if broken
    ]
    if problems:
        raise CheckFailed("rc-service stop: " + "; ".join(problems))
    return (
        f"rc-service stop (OpenRC): SIGTERM through tini, exit status {exit_status}, gone in {seconds:.1f}s "
        f"({total:.1f}s less the {openrc:.1f}s that rc-service status takes on the emulated CPU)"
    )


def check_tampered(evidence: Evidence, name: str) -> str:
    """The second boot, from the card with one flipped byte in the payload image: OpenRC started the
    service, the integrity gate refused it on the console, and nothing runs."""
    refusals = [line for line in evidence.console if "REFUSED: integrity" in line and not line.startswith("BKF ")]
    status, running = evidence.first("tampered-service"), evidence.first("tampered-running")
    problems = [
        message
        for broken, message in (
            (not refusals, "no refusal of the integrity gate on the console"),
            ("started" in status or not status, f"rc-service {name} status: {status or 'no answer'}"),
            (running != "stopped", f"the payload is {running or 'in an unknown state'}"),
        )
        if broken
    ]
    if problems:
        said = evidence.facts.get("tampered", [])[-2:] or [evidence.marker("stage1") or "no report"]
        raise CheckFailed(
            "the card with one flipped byte in the payload image: " + "; ".join(problems) + f" ({' | '.join(said)})"
        )
    return (
        f"booted again from the card with one flipped byte in the payload image: "
        f"{refusals[-1].split('REFUSED: ', 1)[-1].strip()}; rc-service {name}: {status}, nothing runs"
    )
