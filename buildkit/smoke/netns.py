"""The emulated network: a "device" namespace and a "client" one (the Internet), joined by a veth
pair, and a client that makes its requests from inside the client namespace."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from buildkit.errors import UserError
from buildkit.smoke.results import last_line

DEVICE_ADDR = "10.231.0.1"
CLIENT_ADDR = "10.231.0.2"
PREFIX_LEN = 30
# More of the Internet: the client namespace answers for every address of this range (a local
# route on its lo) and the device routes it through the client, so a check can come from many
# sources, or from one no other check used.
CLIENT_SOURCES = ipaddress.ip_network("10.231.1.0/24")
NETNS_DIR = Path("/run/netns")
T = TypeVar("T")
CLONE_NEWNET = 0x40000000


@dataclass(frozen=True)
class Netns:
    device: str
    client: str


@contextlib.contextmanager
def network_namespaces(tag: str) -> Iterator[Netns]:
    """Two namespaces joined by a veth pair: the device at DEVICE_ADDR, a client at CLIENT_ADDR.
    The veth ends are created inside the namespaces, so nothing touches the host's interfaces."""
    net = Netns(f"bk-{tag}-dev", f"bk-{tag}-net")
    created: list[str] = []
    try:
        for name in (net.device, net.client):
            _ip("netns", "add", name)
            created.append(name)
        _ip(
            "link",
            "add",
            f"bkd{tag}",
            "netns",
            net.device,
            "type",
            "veth",
            "peer",
            "name",
            f"bkn{tag}",
            "netns",
            net.client,
        )
        for name, ifname, addr in ((net.device, f"bkd{tag}", DEVICE_ADDR), (net.client, f"bkn{tag}", CLIENT_ADDR)):
            _ip("-n", name, "addr", "add", f"{addr}/{PREFIX_LEN}", "dev", ifname)
            _ip("-n", name, "link", "set", ifname, "up")
            _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", net.client, "route", "add", "local", str(CLIENT_SOURCES), "dev", "lo")
        _ip("-n", net.device, "route", "add", str(CLIENT_SOURCES), "via", CLIENT_ADDR)
        yield net
    finally:
        for name in reversed(created):
            kill_netns_processes(name)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def client_sources(count: int) -> list[str]:
    """The first `count` addresses of CLIENT_SOURCES (its last one is kept for a fresh source)."""
    hosts = list(CLIENT_SOURCES.hosts())[:-1]
    if count > len(hosts):
        raise ValueError(f"{count} client sources asked, {len(hosts)} available")
    return [str(address) for address in hosts[:count]]


FRESH_SOURCE = str(CLIENT_SOURCES.broadcast_address - 1)


def _ip(*args: str) -> None:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise UserError(
            f"ip {' '.join(args)}: {last_line(proc.stderr)}: this host does not allow network "
            "namespaces and veth pairs (run smoke as root on a VM or a --privileged container)"
        )


def netns_pids(name: str) -> list[int]:
    proc = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
    return [int(pid) for pid in proc.stdout.split()]


def kill_netns_processes(name: str, bound: float = 5.0) -> None:
    """SIGKILL everything left in the namespace and wait (bounded) until it is gone."""
    deadline = time.monotonic() + bound
    while (pids := netns_pids(name)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


class NetnsClient:
    """HTTP and TCP to the device, made from inside a network namespace. A network namespace belongs
    to a thread, so one worker thread enters it (setns) and every request runs there."""

    def __init__(self, netns: str, host: str = DEVICE_ADDR) -> None:
        self._netns = netns
        self.host = host
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"netns-{netns}", initializer=self._enter)
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _enter(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(NETNS_DIR / self._netns, os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                code = ctypes.get_errno()
                raise OSError(code, f"setns into {self._netns}: {os.strerror(code)}")
        finally:
            os.close(fd)

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`function(*args, **kwargs)` run inside the namespace (its sockets belong to it)."""
        return self._pool.submit(function, *args, **kwargs).result()

    def request(
        self, path: str, method: str = "GET", headers: dict[str, str] | None = None, timeout: float = 5.0
    ) -> tuple[int, bytes]:
        """(status, body) of `method path` on port 80, for any HTTP answer; OSError when nothing answers."""
        request = urllib.request.Request(f"http://{self.host}{path}", method=method, headers=headers or {})
        return self._pool.submit(self._send, request, timeout).result()

    def _send(self, request: urllib.request.Request, timeout: float) -> tuple[int, bytes]:
        try:
            with self._opener.open(request, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except urllib.error.URLError as exc:
            raise exc.reason if isinstance(exc.reason, OSError) else OSError(str(exc.reason)) from None

    def connect(self, port: int, timeout: float) -> str:
        """ "open", "refused" or "dropped" (no answer within `timeout`)."""
        return self._pool.submit(self._connect, port, timeout).result()

    def _connect(self, port: int, timeout: float) -> str:
        try:
            with socket.create_connection((self.host, port), timeout=timeout):
                return "open"
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "dropped"
        except OSError as exc:
            if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH):
                return "refused"
            raise
