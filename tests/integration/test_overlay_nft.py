"""The overlay's nftables ruleset applied for real in a throwaway network namespace ("device"),
with traffic from a second one ("client") across a veth pair, over IPv4 and IPv6: 80 reaches the
service on 8080, 8080 directly is dropped, a burst of new connections from one source (an IPv4
address, or any number of addresses of one IPv6 /64) is cut off, a source and all sources together
hold at most the recipe's number of connections, neighbour discovery, router advertisements and
MLD work, and the device may only connect out to what the recipe declares."""

from __future__ import annotations

import ipaddress
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import pytest

from buildkit.package import render_overlay
from buildkit.recipe import load_recipe
from support.package import RECIPE_TOML, write_recipe

pytestmark = pytest.mark.root


DEVICE_ADDR, CLIENT_ADDR = "10.77.0.1", "10.77.0.2"
DEVICE_ADDR6, CLIENT_ADDR6 = "2001:db8:77::1", "2001:db8:77::2"
# The client answers for every address of these ranges ("AnyIP" local routes on its lo): the
# Internet behind the device's gateway, many sources without configuring each address.
SOURCES4 = "10.78.0.0/16"
SOURCES6 = "2001:db8:f00d::/48"
TELEMETRY = "192.0.2.10"  # declared in the demo recipe (tcp 443)
UNDECLARED = "192.0.2.20"
HOLD_S = 5  # how long the test server keeps a silent connection open

# Run inside a namespace with `python3 -c PROBE MODE ...`.
PROBE = r"""
import select, socket, struct, sys, threading, time

def serve(addr, port, reply):
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    srv = socket.socket(family)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    srv.bind((addr, port))
    srv.listen(4096)
    print("listening", flush=True)
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=answer, args=(conn, reply), daemon=True).start()

def answer(conn, reply):
    with conn:
        conn.settimeout(HOLD_S)
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

def burst(wait, groups):
    # Per group "DEST|SRC,SRC,...": one non-blocking connect to DEST:80 from each source (a source
    # repeated opens several), then how many completed within `wait`. Every connection stays open
    # until the last group is counted.
    held, counts = [], []
    for group in groups:
        addr, sources = group.split("|")
        socks = []
        for source in sources.split(","):
            s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
            s.setblocking(False)
            if source != "-":
                s.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND: any address of the local routes
                s.bind((source, 0))
            s.connect_ex((addr, 80))
            socks.append(s)
        time.sleep(wait)
        _, writable, _ = select.select([], socks, [], 0)
        counts.append(sum(1 for s in writable if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0))
        held += socks
    print(" ".join(map(str, counts)))

def ping6(addr, timeout):
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    s.settimeout(timeout)
    s.sendto(struct.pack("!BBHHH", 128, 0, 0, 0x4b48, 1) + b"ndp", (addr, 0))
    try:
        while True:
            data, peer = s.recvfrom(1024)
            if data[0] == 129 and peer[0] == addr:
                print("reply")
                return
    except OSError:
        print("no reply")

def advertise(ifname, prefix, hops):
    # A router advertisement with one autoconfiguration prefix, to all nodes of the link.
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, hops)
    index = socket.if_nametoindex(ifname)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
    ra = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 0, 0, 0)
    option = struct.pack("!BBBBIII", 3, 4, 64, 0xC0, 3600, 3600, 0) + socket.inet_pton(socket.AF_INET6, prefix)
    s.sendto(ra + option, ("ff02::1", 0, 0, index))
    print("sent")

def mld(ifname, timeout):
    # Counts MLD listener reports seen on the link (after a hop-by-hop header, as MLD sends them).
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x86DD))
    s.bind((ifname, 0))
    s.settimeout(0.2)
    print("listening", flush=True)
    reports, deadline = 0, time.monotonic() + timeout
    while time.monotonic() < deadline and not reports:
        try:
            frame = s.recv(2048)
        except socket.timeout:
            continue
        header, offset = frame[14 + 6], 14 + 40
        while header == 0 and len(frame) > offset + 1:
            header, offset = frame[offset], offset + (frame[offset + 1] + 1) * 8
        if header == 58 and len(frame) > offset and frame[offset] in (131, 143):
            reports += 1
    print(reports)

mode, args = sys.argv[1], sys.argv[2:]
if mode == "serve":
    serve(args[0], int(args[1]), args[2])
elif mode == "fetch":
    fetch(args[0], int(args[1]), float(args[2]))
elif mode == "burst":
    burst(float(args[0]), args[1:])
elif mode == "ping6":
    ping6(args[0], float(args[1]))
elif mode == "advertise":
    advertise(args[0], args[1], int(args[2]))
else:
    mld(args[0], float(args[1]))
""".replace("HOLD_S", str(HOLD_S))


class Namespaces:
    def __init__(self) -> None:
        tag = f"{os.getpid() % 10000}{secrets.token_hex(2)}"
        self.device, self.client = f"bkpkg-dev-{tag}", f"bkpkg-cli-{tag}"
        self.servers: list[subprocess.Popen] = []
        self.created: list[str] = []
        for name in (self.device, self.client):
            ip("netns", "add", name)
            self.created.append(name)
            # No duplicate address detection: addresses are usable at once (a fresh, private link).
            sysctl(name, "net.ipv6.conf.default.accept_dad", "0")
            sysctl(name, "net.ipv6.conf.all.accept_dad", "0")
        self.dev_if, self.cli_if = f"bkpd{tag}"[:15], f"bkpc{tag}"[:15]
        ip(
            "link",
            "add",
            self.dev_if,
            "netns",
            self.device,
            "type",
            "veth",
            "peer",
            "name",
            self.cli_if,
            "netns",
            self.client,
        )
        ip("-n", self.device, "addr", "add", f"{DEVICE_ADDR}/24", "dev", self.dev_if)
        ip("-n", self.client, "addr", "add", f"{CLIENT_ADDR}/24", "dev", self.cli_if)
        ip("-n", self.device, "addr", "add", f"{DEVICE_ADDR6}/64", "dev", self.dev_if, "nodad")
        ip("-n", self.client, "addr", "add", f"{CLIENT_ADDR6}/64", "dev", self.cli_if, "nodad")
        for address in (TELEMETRY, UNDECLARED):
            ip("-n", self.client, "addr", "add", f"{address}/32", "dev", self.cli_if)
        for name, ifname in ((self.device, self.dev_if), (self.client, self.cli_if)):
            ip("-n", name, "link", "set", ifname, "up")
            ip("-n", name, "link", "set", "lo", "up")
        ip("-n", self.device, "route", "add", "192.0.2.0/24", "via", CLIENT_ADDR)
        ip("-n", self.client, "route", "add", "local", SOURCES4, "dev", "lo")
        ip("-n", self.device, "route", "add", SOURCES4, "via", CLIENT_ADDR)
        ip("-n", self.client, "-6", "route", "add", "local", SOURCES6, "dev", "lo")
        ip("-n", self.device, "-6", "route", "add", SOURCES6, "via", CLIENT_ADDR6)
        # IPv6 on a link that just came up takes a moment (link-local address, routes).
        deadline = time.monotonic() + 10
        while self.probe(self.client, "ping6", DEVICE_ADDR6, "0.5") != "reply":
            assert time.monotonic() < deadline, "IPv6 across the veth pair did not come up"

    def load(self, ruleset: Path) -> None:
        loaded = subprocess.run(
            ["ip", "netns", "exec", self.device, "nft", "-f", str(ruleset)], capture_output=True, text=True
        )
        assert loaded.returncode == 0, loaded.stderr

    def serve(self, netns: str, addr: str, port: int, reply: str) -> None:
        proc = self.start(netns, "serve", addr, str(port), reply)
        self.servers.append(proc)
        assert proc.stdout.readline().strip() == "listening", proc.stderr.read()

    def start(self, netns: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-u", "-c", PROBE, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def probe(self, netns: str, *args: str) -> str:
        done = subprocess.run(
            ["ip", "netns", "exec", netns, sys.executable, "-c", PROBE, *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip()

    def burst(self, *groups: tuple[str, list[str]], wait: float = 0.8) -> list[int]:
        """For each (address, sources) in turn: how many of one connection per source to
        address:80 complete within `wait`, all of them held open until the last is counted."""
        args = [f"{addr}|{','.join(sources)}" for addr, sources in groups]
        return [int(n) for n in self.probe(self.client, "burst", str(wait), *args).split()]

    def close(self) -> None:
        for proc in self.servers:
            proc.kill()
            proc.wait()
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "del", name], check=False)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def sysctl(netns: str, key: str, value: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, "sysctl", "-qw", f"{key}={value}"], check=True, capture_output=True)


def device_addresses(ns: Namespaces) -> str:
    return subprocess.run(
        ["ip", "-n", ns.device, "-6", "addr", "show", "dev", ns.dev_if], capture_output=True, text=True, check=True
    ).stdout


def ruleset_of(recipe_dir: Path, key, directory: Path) -> Path:
    overlay = render_overlay(load_recipe(recipe_dir), key.public(), epoch=0)
    rules = next(entry for entry in overlay if entry.path == "etc/nftables.nft")
    path = directory / "nftables.nft"
    path.write_bytes(rules.data)
    return path


def firewalled_namespaces(ruleset: Path):
    ns = Namespaces()
    try:
        ns.load(ruleset)
        ns.serve(ns.device, "::", 8080, "hello-from-8080")
        ns.serve(ns.client, TELEMETRY, 443, "telemetry")
        ns.serve(ns.client, UNDECLARED, 443, "undeclared")
        yield ns
    finally:
        ns.close()


def with_firewall_table(tmp_path: Path, table: str) -> Path:
    return write_recipe(tmp_path, RECIPE_TOML + f"\n[firewall]\n{table}\n")


@pytest.fixture(scope="module")
def ruleset(packaged_demo, tmp_path_factory) -> Path:
    """The demo recipe has no [firewall] table: the defaults (20/s, burst 40, 32 per source, 512)."""
    return ruleset_of(packaged_demo.recipe_dir, packaged_demo.key, tmp_path_factory.mktemp("nft"))


@pytest.fixture(scope="module")
def firewalled(ruleset):
    yield from firewalled_namespaces(ruleset)


def firewalled_with(packaged_demo, tmp_path_factory, name: str, table: str):
    recipe = with_firewall_table(tmp_path_factory.mktemp(f"{name}-recipe"), table)
    yield from firewalled_namespaces(ruleset_of(recipe, packaged_demo.key, tmp_path_factory.mktemp(name)))


@pytest.fixture(scope="module")
def rate_limited(packaged_demo, tmp_path_factory):
    """A slow rate and room for many connections: the rate limit is what cuts a burst."""
    table = "new_per_second = 10\nnew_burst = 20\nconnections_per_source = 1000\nconnections_total = 2000"
    yield from firewalled_with(packaged_demo, tmp_path_factory, "rate", table)


@pytest.fixture(scope="module")
def capped(packaged_demo, tmp_path_factory):
    """A fast rate and few connections: the connection caps are what cut a burst."""
    table = "new_per_second = 1000\nnew_burst = 1000\nconnections_per_source = 5\nconnections_total = 8"
    yield from firewalled_with(packaged_demo, tmp_path_factory, "cap", table)


def addresses(network: str, first: int, count: int) -> list[str]:
    """`count` consecutive addresses of `network` from its `first`th."""
    net = ipaddress.ip_network(network)
    return [str(net.network_address + first + i) for i in range(count)]


def test_ruleset_loads_with_default_drop_everywhere(firewalled):
    listed = subprocess.run(
        ["ip", "netns", "exec", firewalled.device, "nft", "list", "ruleset"], capture_output=True, text=True, check=True
    ).stdout
    for chain in ("input", "forward", "output"):
        assert f"type filter hook {chain} priority filter; policy drop;" in listed


@pytest.mark.parametrize("address", [DEVICE_ADDR, DEVICE_ADDR6])
def test_port_80_reaches_the_service_port(firewalled, address):
    assert firewalled.probe(firewalled.client, "fetch", address, "80", "3") == "open hello-from-8080"


@pytest.mark.parametrize("address", [DEVICE_ADDR, DEVICE_ADDR6])
def test_service_port_is_not_reachable_directly(firewalled, address):
    assert firewalled.probe(firewalled.client, "fetch", address, "8080", "2") == "dropped"


def test_other_ports_are_dropped(firewalled):
    assert firewalled.probe(firewalled.client, "fetch", DEVICE_ADDR, "22", "2") == "dropped"


def test_neighbour_discovery_lets_ping6_across(firewalled):
    for netns in (firewalled.device, firewalled.client):
        ip("-n", netns, "neigh", "flush", "all")
    assert firewalled.probe(firewalled.client, "ping6", DEVICE_ADDR6, "3") == "reply"


def test_router_advertisement_configures_an_address(firewalled):
    assert firewalled.probe(firewalled.client, "advertise", firewalled.cli_if, "2001:db8:aa::", "255") == "sent"
    deadline = time.monotonic() + 5
    while "2001:db8:aa:" not in device_addresses(firewalled) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "2001:db8:aa:" in device_addresses(firewalled)


def test_device_sends_mld_reports(firewalled):
    """A new address joins its solicited-node group: the device says so with an MLD report, which
    the output chain's default drop would otherwise swallow (a snooping switch then stops
    forwarding neighbour solicitations to it)."""
    listener = firewalled.start(firewalled.client, "mld", firewalled.cli_if, "5")
    try:
        assert listener.stdout.readline().strip() == "listening", listener.stderr.read()
        ip("-n", firewalled.device, "addr", "add", "2001:db8:77::99/64", "dev", firewalled.dev_if, "nodad")
        out, err = listener.communicate(timeout=20)
    finally:
        listener.kill()
    assert int(out.strip()) >= 1, err


def test_default_caps_cut_a_burst_from_one_source(firewalled):
    # The defaults: 40 new connections at once, of which at most 32 held at a time.
    assert firewalled.burst((DEVICE_ADDR, ["10.78.9.9"] * 150)) == [32]


@pytest.mark.parametrize(
    "sources",
    [
        ["10.78.1.1"] * 150,
        addresses("2001:db8:f00d:1::/64", 0x1000, 150),  # 150 addresses, one /64
    ],
    ids=["ipv4-address", "ipv6-64"],
)
def test_burst_of_new_connections_from_one_source_is_limited(rate_limited, sources):
    destination = DEVICE_ADDR6 if ":" in sources[0] else DEVICE_ADDR
    # Another source (for IPv6 another /64 of the same /48) has its own budget.
    other = "2001:db8:f00d:2::1" if ":" in destination else "10.78.2.1"
    flood, neighbour = rate_limited.burst((destination, sources), (destination, [other] * 10))
    # 20 at once plus 10/s while the burst lasts; the rest are dropped (their SYN retry comes
    # after the 0.8 s window).
    assert 18 <= flood <= 30, flood
    assert neighbour == 10


def test_connection_caps_per_source_and_in_total(capped):
    counts = capped.burst(
        (DEVICE_ADDR, ["10.78.3.1"] * 10),  # one address: 5 of 10
        (DEVICE_ADDR6, addresses("2001:db8:f00d:3::/64", 1, 10)),  # one /64: 5, but 3 left in total
        (DEVICE_ADDR, [f"10.78.4.{i}" for i in range(1, 11)]),  # 10 sources: the total is reached
        wait=0.5,
    )
    assert counts == [5, 3, 0]
    # Closed connections free their slots.
    assert capped.burst((DEVICE_ADDR, [f"10.78.5.{i}" for i in range(1, 11)]), wait=0.5) == [8]


def test_egress_only_to_declared_telemetry(firewalled):
    assert firewalled.probe(firewalled.device, "fetch", TELEMETRY, "443", "3") == "open telemetry"
    assert firewalled.probe(firewalled.device, "fetch", UNDECLARED, "443", "2") == "dropped"
    assert firewalled.probe(firewalled.device, "fetch", TELEMETRY, "444", "2") == "dropped"


def test_service_port_reachable_from_the_device_itself(firewalled):
    assert firewalled.probe(firewalled.device, "fetch", "127.0.0.1", "8080", "3") == "open hello-from-8080"
