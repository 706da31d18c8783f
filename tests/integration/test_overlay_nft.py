"""The overlay's nftables ruleset applied for real in a throwaway network namespace ("device"),
with traffic from a second one ("client") across a veth pair: 80 reaches the service on 8080, 8080
directly is dropped, a burst of new connections from one source is cut off, and the device may
only connect out to what the recipe declares."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from buildkit.package import render_overlay
from buildkit.recipe import load_recipe

pytestmark = pytest.mark.root


DEVICE_ADDR, CLIENT_ADDR = "10.77.0.1", "10.77.0.2"
TELEMETRY = "192.0.2.10"  # declared in the demo recipe (tcp 443)
UNDECLARED = "192.0.2.20"

# Run inside a namespace with `python3 -c PROBE MODE ...`.
PROBE = r"""
import select, socket, sys, threading, time

def serve(addr, port, reply):
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((addr, port))
    srv.listen(1024)
    print("listening", flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=answer, args=(conn, reply), daemon=True).start()

def answer(conn, reply):
    with conn:
        conn.settimeout(5)
        try:
            conn.recv(1024)
            conn.sendall(reply.encode())
        except OSError:
            pass

def fetch(addr, port, timeout):
    try:
        with socket.create_connection((addr, port), timeout=timeout) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\n\r\n")
            print("open", conn.recv(1024).decode(errors="replace"))
    except ConnectionRefusedError:
        print("refused")
    except OSError:
        print("dropped")

def burst(addr, port, count, wait):
    socks = []
    for _ in range(count):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex((addr, port))
        socks.append(s)
    time.sleep(wait)
    _, writable, _ = select.select([], socks, [], 0)
    print(sum(1 for s in writable if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0))

mode, args = sys.argv[1], sys.argv[2:]
if mode == "serve":
    serve(args[0], int(args[1]), args[2])
elif mode == "fetch":
    fetch(args[0], int(args[1]), float(args[2]))
else:
    burst(args[0], int(args[1]), int(args[2]), float(args[3]))
"""


class Namespaces:
    def __init__(self) -> None:
        tag = f"{os.getpid() % 10000}{secrets.token_hex(2)}"
        self.device, self.client = f"bkpkg-dev-{tag}", f"bkpkg-cli-{tag}"
        self.servers: list[subprocess.Popen] = []
        self.created: list[str] = []
        for name in (self.device, self.client):
            ip("netns", "add", name)
            self.created.append(name)
        dev_if, cli_if = f"bkpd{tag}"[:15], f"bkpc{tag}"[:15]
        ip("link", "add", dev_if, "netns", self.device, "type", "veth", "peer", "name", cli_if, "netns", self.client)
        ip("-n", self.device, "addr", "add", f"{DEVICE_ADDR}/24", "dev", dev_if)
        ip("-n", self.client, "addr", "add", f"{CLIENT_ADDR}/24", "dev", cli_if)
        for address in (TELEMETRY, UNDECLARED):
            ip("-n", self.client, "addr", "add", f"{address}/32", "dev", cli_if)
        for name, ifname in ((self.device, dev_if), (self.client, cli_if)):
            ip("-n", name, "link", "set", ifname, "up")
            ip("-n", name, "link", "set", "lo", "up")
        ip("-n", self.device, "route", "add", "192.0.2.0/24", "via", CLIENT_ADDR)

    def serve(self, netns: str, addr: str, port: int, reply: str) -> None:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-u", "-c", PROBE, "serve", addr, str(port), reply],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.servers.append(proc)
        assert proc.stdout.readline().strip() == "listening", proc.stderr.read()

    def probe(self, netns: str, *args: str) -> str:
        return subprocess.run(
            ["ip", "netns", "exec", netns, sys.executable, "-c", PROBE, *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()

    def close(self) -> None:
        for proc in self.servers:
            proc.kill()
            proc.wait()
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "del", name], check=False)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def ruleset(packaged_demo, tmp_path_factory) -> Path:
    overlay = render_overlay(load_recipe(packaged_demo.recipe_dir), packaged_demo.key.public(), epoch=0)
    rules = next(entry for entry in overlay if entry.path == "etc/nftables.nft")
    path = tmp_path_factory.mktemp("nft") / "nftables.nft"
    path.write_bytes(rules.data)
    return path


@pytest.fixture(scope="module")
def firewalled(ruleset):
    ns = Namespaces()
    try:
        loaded = subprocess.run(
            ["ip", "netns", "exec", ns.device, "nft", "-f", str(ruleset)], capture_output=True, text=True
        )
        assert loaded.returncode == 0, loaded.stderr
        ns.serve(ns.device, "0.0.0.0", 8080, "hello-from-8080")
        ns.serve(ns.client, TELEMETRY, 443, "telemetry")
        ns.serve(ns.client, UNDECLARED, 443, "undeclared")
        yield ns
    finally:
        ns.close()


def test_ruleset_loads_with_default_drop_everywhere(firewalled):
    listed = subprocess.run(
        ["ip", "netns", "exec", firewalled.device, "nft", "list", "ruleset"], capture_output=True, text=True, check=True
    ).stdout
    for chain in ("input", "forward", "output"):
        assert f"type filter hook {chain} priority filter; policy drop;" in listed


def test_port_80_reaches_the_service_port(firewalled):
    assert firewalled.probe(firewalled.client, "fetch", DEVICE_ADDR, "80", "3") == "open hello-from-8080"


def test_service_port_is_not_reachable_directly(firewalled):
    assert firewalled.probe(firewalled.client, "fetch", DEVICE_ADDR, "8080", "2") == "dropped"


def test_other_ports_are_dropped(firewalled):
    assert firewalled.probe(firewalled.client, "fetch", DEVICE_ADDR, "22", "2") == "dropped"


def test_burst_of_new_connections_from_one_source_is_limited(firewalled):
    time.sleep(3)  # let the per-source budget refill after the other tests' connections
    accepted = int(firewalled.probe(firewalled.client, "burst", DEVICE_ADDR, "80", "150", "0.8"))
    # 40 packets of burst plus 20/s while the burst lasts; the rest are dropped (their SYN retry
    # comes after the 0.8 s window).
    assert 30 <= accepted <= 70, accepted


def test_egress_only_to_declared_telemetry(firewalled):
    assert firewalled.probe(firewalled.device, "fetch", TELEMETRY, "443", "3") == "open telemetry"
    assert firewalled.probe(firewalled.device, "fetch", UNDECLARED, "443", "2") == "dropped"
    assert firewalled.probe(firewalled.device, "fetch", TELEMETRY, "444", "2") == "dropped"


def test_service_port_reachable_from_the_device_itself(firewalled):
    assert firewalled.probe(firewalled.device, "fetch", "127.0.0.1", "8080", "3") == "open hello-from-8080"
