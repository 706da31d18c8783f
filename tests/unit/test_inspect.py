"""`buildkit inspect`'s pure parts: attributing Go functions to modules, directory totals, reading
the overlay's ruleset; and exit 2 on what is not a package."""

from __future__ import annotations

from buildkit.archgate.gobuildinfo import GoBuildInfo
from buildkit.inspect import directory_sizes, firewall_rules, module_code_sizes, module_of

MODULES = ["example.com/greet/v2", "example.com/greet", "golang.org/x/net"]  # longest first


def test_functions_belong_to_the_longest_module_prefix_of_their_package():
    assert module_of("example.com/greet/v2/pkg.(*T).Method", MODULES, "example.com/app") == "example.com/greet/v2"
    assert module_of("example.com/greet.Greeting", MODULES, "example.com/app") == "example.com/greet"
    assert module_of("example.com/greeter.F", MODULES, "example.com/app") == "std", "a prefix, not a module"
    assert module_of("main.main", MODULES, "example.com/app") == "example.com/app"
    assert module_of("net/http.(*Server).Serve", MODULES, "example.com/app") == "std"
    assert module_of("type:.eq.[2]interface {}", MODULES, "example.com/app") == "std"


def test_code_sizes_are_the_distance_to_the_next_function():
    info = GoBuildInfo("go1.27", main_module="example.com/app", modules=(("example.com/greet", "v1.0.0"),))
    sizes = module_code_sizes(info, (0x100, 0x180, 0x200), ("runtime.main", "example.com/greet.G", "main.main"), 0x260)
    assert sizes == {"std": 0x80, "example.com/greet": 0x80, "example.com/app": 0x60}


def test_directories_down_to_two_levels_largest_first():
    rows = directory_sizes({"usr/lib/a.so": 300, "usr/bin/python": 500, "app/main.py": 10, "top": 1})
    assert rows == [
        {"name": "usr/", "bytes": 800},
        {"name": "usr/bin/", "bytes": 500},
        {"name": "usr/lib/", "bytes": 300},
        {"name": "app/", "bytes": 10},
    ]


RULESET = """flush ruleset
define SERVICE_PORT = 8080
table inet buildkit {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		iifname != "lo" tcp dport 80 redirect to :$SERVICE_PORT
	}
	chain input {
		type filter hook input priority filter; policy drop;
		tcp dport $SERVICE_PORT ct original proto-dst != 80 drop
		tcp dport $SERVICE_PORT ct state new accept
		udp sport 67 udp dport 68 accept
	}
	chain output {
		type filter hook output priority filter; policy drop;
		ip6 daddr { 2606:4700::1111 } udp dport 53 accept   # DNS
		ip daddr { 192.0.2.10 } tcp dport 443 accept
	}
}
"""


def test_ruleset_ports_inbound_and_outbound():
    rules = firewall_rules(RULESET)
    inbound = [(r["proto"], r["port"], r.get("redirect_to"), r.get("only_redirected")) for r in rules["inbound"]]
    assert inbound == [("tcp", "80", "8080", None), ("tcp", "8080", None, True), ("udp", "68", None, None)]
    outbound = [(r["proto"], r["port"], r["addresses"]) for r in rules["outbound"]]
    assert outbound == [("udp", "53", ["2606:4700::1111"]), ("tcp", "443", ["192.0.2.10"])]


def test_not_a_package_is_exit_2(run_cli, tmp_path):
    result = run_cli("inspect", tmp_path)
    assert result.returncode == 2 and "not an output directory of `buildkit package`" in result.stderr
    (tmp_path / "manifest.json").write_text("[1, 2]")
    result = run_cli("inspect", tmp_path)
    assert result.returncode == 2 and "not a buildkit manifest" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
