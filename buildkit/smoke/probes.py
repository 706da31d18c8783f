"""The service checks a recipe declares in its [smoke] table: HTTP probes, the log window, the
zombie probe. They run from the client namespace, through port 80, once the platform checks have
seen the payload listen."""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from buildkit.recipe import HttpProbe, LogWindowProbe, SlowClientsProbe, Smoke, ZombieProbe
from buildkit.smoke.device import Device
from buildkit.smoke.netns import FRESH_SOURCE, NetnsClient, client_sources
from buildkit.smoke.procfs import Proc, descendants
from buildkit.smoke.results import CheckFailed, snippet
from buildkit.smoke.slowclients import SlowClientsOutcome, hold_slow_clients

PROBE_TIMEOUT = 10.0  # one request to a payload under emulation
REAP_BOUND = 10.0
LOG_WINDOW = "log-window"
NO_ZOMBIES = "no-zombies"
SLOW_CLIENTS = "slow-clients"
HTTP_PORT = 80
# Slow clients come from several sources, each under the firewall's default caps (32 held, 40 new
# at once): the check is of the service; the firewall's caps have their own tests.
SLOW_CLIENTS_PER_SOURCE = 10
SLOW_PROBE_AFTER_S = 1.0  # they trickle this long before the probe request
SLOW_HOLD_S = 3.0  # and are all closed after this long


class ServiceAccess(Protocol):
    """What a declared check needs of the running device, in user-mode emulation (Service) or on the
    emulated Pi (buildkit.smoke.system): port 80, the test secrets, the processes of the sandbox,
    and slow clients held against port 80."""

    @property
    def secret_values(self) -> dict[str, str]:
        """The test value provisioned for each declared secret."""
        ...

    @property
    def timeout(self) -> float: ...

    def request(
        self, path: str, method: str = "GET", headers: dict[str, str] | None = None, timeout: float = 5.0
    ) -> tuple[int, bytes]: ...

    def sandbox_processes(self) -> list[Proc]:
        """Every process under the sandbox's PID 1 (tini)."""
        ...

    def hold_slow_clients(self, path: str, connections: int, answer_within: float) -> tuple[SlowClientsOutcome, str]:
        """The outcome of hold_slow_clients against port 80, and how many were held from where."""
        ...


@dataclass(frozen=True)
class Service:
    """What a declared check talks to: the running device, from the client namespace."""

    device: Device
    client: NetnsClient
    secret_values: dict[str, str]  # the test value provisioned for each declared secret
    timeout: float

    def request(
        self, path: str, method: str = "GET", headers: dict[str, str] | None = None, timeout: float = 5.0
    ) -> tuple[int, bytes]:
        return self.client.request(path, method, headers, timeout)

    def sandbox_processes(self) -> list[Proc]:
        tini, _ = self.device.sandbox()
        return descendants(tini.pid)

    def hold_slow_clients(self, path: str, connections: int, answer_within: float) -> tuple[SlowClientsOutcome, str]:
        sources = client_sources(-(-connections // SLOW_CLIENTS_PER_SOURCE))
        outcome = self.client.call(
            hold_slow_clients,
            self.client.host,
            HTTP_PORT,
            path,
            connections,
            probe_after=SLOW_PROBE_AFTER_S,
            hold=SLOW_HOLD_S,
            answer_within=answer_within,
            sources=sources,
            probe_source=FRESH_SOURCE,
        )
        return outcome, f"of {connections} slow connections accepted (from {len(sources)} sources)"


DeclaredCheck = Callable[[ServiceAccess], str]


def declared_checks(smoke: Smoke) -> tuple[tuple[str, DeclaredCheck], ...]:
    """(name, check) for each check of the [smoke] table, in the order they run."""
    checks: list[tuple[str, DeclaredCheck]] = [
        (probe.check_name, partial(check_http_probe, probe=probe)) for probe in smoke.http
    ]
    if smoke.log_window is not None:
        checks.append((LOG_WINDOW, partial(check_log_window, window=smoke.log_window)))
    if smoke.zombies is not None:
        checks.append((NO_ZOMBIES, partial(check_no_zombies, zombies=smoke.zombies)))
    if smoke.slow_clients is not None:
        checks.append((SLOW_CLIENTS, partial(check_slow_clients, slow=smoke.slow_clients)))
    return tuple(checks)


def bearer(secret_values: dict[str, str], secret: str) -> dict[str, str]:
    """The Authorization header with the test value provisioned for `secret` ({} for no secret)."""
    if not secret:
        return {}
    if secret not in secret_values:
        raise CheckFailed(
            f"no secret {secret!r} is provisioned on the device: the overlay declares "
            f"{', '.join(secret_values) or 'none'}"
        )
    return {"Authorization": f"Bearer {secret_values[secret]}"}


def check_http_probe(service: ServiceAccess, probe: HttpProbe) -> str:
    return http_probe(service.request, service.secret_values, probe)


class Requester(Protocol):
    """(status, body) of `method path` on the device's port 80 (NetnsClient.request's signature)."""

    def __call__(
        self, path: str, method: str = "GET", headers: dict[str, str] | None = None, timeout: float = 5.0
    ) -> tuple[int, bytes]: ...


def http_probe(request: Requester, secret_values: dict[str, str], probe: HttpProbe) -> str:
    """One declared HTTP probe, through whatever reaches the device's port 80."""
    headers = bearer(secret_values, probe.token_secret)
    status, body = request(probe.path, probe.method, headers, timeout=PROBE_TIMEOUT)
    asked = f"{probe.method} {probe.path}" + (f" with the {probe.token_secret} token" if headers else "")
    if status != probe.status:
        raise CheckFailed(f"{asked} answered {status}, expected {probe.status}: {snippet(body)}")
    if probe.body_contains and probe.body_contains not in body.decode(errors="replace"):
        raise CheckFailed(f"{asked} answered {status} without {probe.body_contains!r} in its body: {snippet(body)}")
    return f"{asked} → {status} {snippet(body)}"


def check_log_window(service: ServiceAccess, window: LogWindowProbe) -> str:
    """The window answers 401 without or with a wrong token, and with the right one returns records in
    which the secrets sent in an earlier request do not appear, each record within its bound."""
    authorized = bearer(service.secret_values, window.token_secret)
    token = authorized["Authorization"].removeprefix("Bearer ")
    canaries = send_canary_request(service.request, window)
    for label, headers in (("no token", {}), ("a wrong token", {"Authorization": f"Bearer wrong-{token}"})):
        status, body = service.request(window.path, headers=headers, timeout=PROBE_TIMEOUT)
        if status != 401:
            raise CheckFailed(f"{window.path} with {label} answered {status}, expected 401: {snippet(body)}")
    status, body = service.request(window.path, headers=authorized, timeout=PROBE_TIMEOUT)
    if status != 200:
        raise CheckFailed(f"{window.path} with the right token answered {status}: {snippet(body)}")
    text = body.decode(errors="replace")
    records = json_records(text)
    if not any(window.request_path in json.dumps(record) for record, _ in records):
        raise CheckFailed(
            f"{window.path} has {len(records)} record(s), none for the {window.request_path} request just made"
        )
    leaked = sorted(name for name, value in canaries.items() if value in text) + (
        ["the window's token itself"] if token in text else []
    )
    if leaked:
        raise CheckFailed(f"{window.path} shows unredacted secrets: {', '.join(leaked)}")
    return (
        f"401 without and with a wrong token; the right token gives {len(records)} record(s), the "
        f"{window.request_path} request's token, password, Authorization and Cookie redacted"
        f"{check_record_sizes(records, window.max_record_bytes)}"
    )


def send_canary_request(request: Requester, window: LogWindowProbe) -> dict[str, str]:
    """A request with a fresh secret in each place a client may put one (and, when the window states
    its record bound, a query longer than that): the values the window must not show."""
    canaries = {name: f"smoke-{name}-{secrets.token_hex(8)}" for name in ("token", "password", "bearer", "cookie")}
    padding = f"&padding={'x' * 2 * window.max_record_bytes}" if window.max_record_bytes else ""
    request(
        f"{window.request_path}?token={canaries['token']}&password={canaries['password']}{padding}",
        headers={"Authorization": f"Bearer {canaries['bearer']}", "Cookie": f"session={canaries['cookie']}"},
        timeout=PROBE_TIMEOUT,
    )
    return canaries


def check_record_sizes(records: list[tuple[dict[str, Any], int]], bound: int | None) -> str:
    if bound is None:
        return ""
    largest = max((size for _, size in records), default=0)
    if largest > bound:
        raise CheckFailed(f"a record of {largest} bytes, over the window's bound of {bound}")
    return f"; every record within {bound} bytes (largest {largest}, after a request longer than that)"


def json_records(text: str) -> list[tuple[dict[str, Any], int]]:
    """(record, its size in bytes) for records given as JSON lines or as one JSON array."""
    stripped = text.strip()
    if stripped.startswith("["):
        with contextlib.suppress(json.JSONDecodeError):
            return [
                (item, len(json.dumps(item, separators=(",", ":")).encode()))
                for item in json.loads(stripped)
                if isinstance(item, dict)
            ]
        return []
    records = []
    for line in stripped.splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            if isinstance(item := json.loads(line), dict):
                records.append((item, len(line.encode())))
    return records


def check_no_zombies(service: ServiceAccess, zombies: ZombieProbe) -> str:
    """The declared endpoint starts processes that leave orphans behind; once they exit, nothing of
    them may remain under the sandbox's PID 1, zombies least of all."""
    before = {proc.pid for proc in service.sandbox_processes()}
    # Each child is a fresh emulated process: an interpreter takes seconds to start under qemu.
    status, body = service.request(zombies.path, timeout=service.timeout)
    if status != 200:
        raise CheckFailed(f"GET {zombies.path} answered {status}: {snippet(body)}")
    started = time.monotonic()
    while leftovers := [proc for proc in service.sandbox_processes() if proc.pid not in before]:
        if time.monotonic() - started > REAP_BOUND:
            zombie_count = sum(proc.state == "Z" for proc in leftovers)
            raise CheckFailed(
                f"{zombie_count} zombie(s) and {len(leftovers) - zombie_count} other process(es) "
                f"from {zombies.path} still there after {REAP_BOUND:.0f}s"
            )
        time.sleep(0.1)
    return (
        f"GET {zombies.path} → 200 {snippet(body, 80)}; every process it started gone and reaped "
        f"{time.monotonic() - started:.1f}s later, 0 zombies"
    )


def check_slow_clients(service: ServiceAccess, slow: SlowClientsProbe) -> str:
    """While `slow.connections` slow clients trickle an unfinished request each, `slow.path`, asked
    on a fresh connection, answers 200 within the bound."""
    within = slow.answer_within_ms / 1000
    outcome, how = service.hold_slow_clients(slow.path, slow.connections, within)
    held = f"{outcome.opened} {how}"
    if outcome.status != 200 or outcome.answered_in > within:
        answer = outcome.detail or f"answered {outcome.status}"
        raise CheckFailed(
            f"{held}; meanwhile GET {slow.path}: {answer} after {outcome.answered_in:.2f} s, bound {within:g} s"
        )
    return (
        f"{held}; meanwhile GET {slow.path} → 200 in {outcome.answered_in * 1000:.0f} ms (bound {within:g} s); "
        f"{outcome.closed_by_server} of them closed by the service within {SLOW_HOLD_S:g} s, the rest by smoke"
    )
