"""Slow clients (slowloris): many connections that each send the start of a request and then a
header line now and then, never finishing it. A service whose reads have a timeout per read, or
whose threads each wait on one connection, is held by them; one with a deadline for the whole
request and connections that hold no thread answers everyone else at once.

`hold_slow_clients` is bounded in every way: a fixed number of connections, to one address, for a
fixed time; every socket is closed when it returns. Used by `buildkit smoke` (from the client
namespace) and by the reference services' tests (on loopback)."""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

CONNECT_WAIT_S = 3.0
TRICKLE_INTERVAL_S = 0.5  # far below any sensible timeout per read: only a whole-request deadline cuts them
MAX_CONNECTIONS = 1000
IP_FREEBIND = 15  # Linux: bind to any address of a local route, as the client namespace's sources are


@dataclass(frozen=True)
class SlowClientsOutcome:
    opened: int  # slow connections the device accepted (the firewall may refuse some)
    closed_by_server: int  # of those, how many the server had closed when the run ended
    status: int  # of the probe request made while they were held (0: no answer)
    answered_in: float  # seconds the probe took (to its answer, or to giving up)
    detail: str  # what went wrong with the probe, if anything


def hold_slow_clients(
    host: str,
    port: int,
    path: str,
    count: int,
    *,
    probe_after: float,
    hold: float,
    answer_within: float,
    sources: Sequence[str] = (),
    probe_source: str = "",
) -> SlowClientsOutcome:
    """Open `count` slow connections to host:port (from `sources` in turn, if given) and keep them
    trickling for `hold` seconds; `probe_after` seconds in, GET `path` on a fresh connection (from
    `probe_source`, if given) and time its answer, giving up after `answer_within` seconds."""
    if not 0 < count <= MAX_CONNECTIONS:
        raise ValueError(f"slow connections: expected 1 to {MAX_CONNECTIONS}, got {count}")
    slow: list[socket.socket] = []
    try:
        for i in range(count):
            slow.append(_connect(host, port, sources[i % len(sources)] if sources else ""))
        opened = _started(slow, host, path)
        started = time.monotonic()
        closed: set[socket.socket] = set()
        probed: tuple[int, float, str] | None = None
        while (elapsed := time.monotonic() - started) < hold:
            if probed is None and elapsed >= probe_after:
                probed = _probe(host, port, path, probe_source, answer_within)
            _trickle(opened, closed)
            time.sleep(TRICKLE_INTERVAL_S)
        if probed is None:
            probed = _probe(host, port, path, probe_source, answer_within)
        _trickle(opened, closed)
        return SlowClientsOutcome(len(opened), len(closed), *probed)
    finally:
        for sock in slow:
            sock.close()


def _connect(host: str, port: int, source: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setblocking(False)
    if source:
        sock.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)
        sock.bind((source, 0))
    sock.connect_ex((host, port))
    return sock


def _started(socks: list[socket.socket], host: str, path: str) -> list[socket.socket]:
    """The connections that are established within CONNECT_WAIT_S, each sent a request's start."""
    pending, opened = set(socks), []
    deadline = time.monotonic() + CONNECT_WAIT_S
    while pending and (left := deadline - time.monotonic()) > 0:
        _, writable, _ = select.select([], list(pending), [], left)
        for sock in writable:
            pending.discard(sock)
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                with contextlib.suppress(OSError):
                    sock.send(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n".encode())
                    opened.append(sock)
    return opened


def _trickle(socks: list[socket.socket], closed: set[socket.socket]) -> None:
    """One more header line on each connection the server has not closed; note those it has."""
    for sock in socks:
        if sock in closed:
            continue
        try:
            while data := sock.recv(4096):  # an answer (408, 400...) may come before the close
                del data
            closed.add(sock)  # recv returned b"": the server closed it
        except BlockingIOError:
            with contextlib.suppress(OSError):
                sock.send(b"X-Slow: 1\r\n")
        except OSError:
            closed.add(sock)


def _probe(host: str, port: int, path: str, source: str, within: float) -> tuple[int, float, str]:
    """(status, seconds, problem) of GET `path` on a fresh connection, waiting `within` seconds at most."""
    started = time.monotonic()
    try:
        with socket.create_connection(
            (host, port), timeout=within, source_address=(source, 0) if source else None
        ) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while b"\r\n" not in answer:
                sock.settimeout(max(0.01, within - (time.monotonic() - started)))
                if not (data := sock.recv(4096)):
                    break
                answer += data
    except OSError as exc:
        return 0, time.monotonic() - started, f"GET {path}: {exc or type(exc).__name__}"
    status_line = answer.split(b"\r\n", 1)[0].decode(errors="replace")
    parts = status_line.split()
    status = int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else 0
    return status, time.monotonic() - started, "" if status else f"GET {path}: no status line ({status_line!r})"
