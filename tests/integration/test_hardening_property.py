"""Issue 12: generated recipes and source trees, loaded, built (real Go) and gated in-process, as
`buildkit build` does. Every run ends as exit 0, 1 or 2 with a one-line message, never an internal
error; a run that fails leaves nothing in the out dir and nothing new in the cache."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from buildkit.build.stage import build_recipe
from buildkit.context import build_context
from buildkit.errors import UserError, VerificationFailed
from buildkit.recipe import load_recipe
from support.go import HELLO_GO, environment, session_cache

EXAMPLES = 25
GIB = 1 << 30

RECIPE_EDITS = {
    "as is": ("", ""),
    "uid 2^32": ("uid = 10001", "uid = 4294967296"),
    "entrypoint /": ('entrypoint = "/app/hello-go"', 'entrypoint = "/"'),
    "entrypoint elsewhere": ('entrypoint = "/app/hello-go"', 'entrypoint = "/usr/bin/hello"'),
    "writable //proc": ('writable = ["/var/lib/hello"]', 'writable = ["//proc"]'),
    "secret in env": ('env = { LOG_LEVEL = "info" }', 'env = { DB_PASS = "hunter2" }'),
    "catch-all egress": ('dns = ["1.1.1.1", "9.9.9.9"]', 'dns = ["0.0.0.0/0"]'),
    "source /etc": ('source = "."', 'source = "/etc"'),
    "go package outside": ('package = "."', 'package = "../x"'),
}


def add_fifo(src: Path) -> None:
    os.mkfifo(src / "pipe")


def add_escaping_link(src: Path) -> None:
    (src / "shadow").symlink_to("../../../../etc/shadow")


def add_loop(src: Path) -> None:
    (src / "loop").symlink_to("loop")


def add_sparse(src: Path) -> None:
    with open(src / "big.bin", "wb") as fh:
        fh.truncate(GIB + 1)


def add_inner_link(src: Path) -> None:
    (src / "docs").mkdir()
    (src / "docs" / "README").write_text("hello\n")
    (src / "README").symlink_to("docs/README")


def break_main(src: Path) -> None:
    (src / "main.go").write_text("package main\n\nfunc main() { undefined() }\n")


def add_file(src: Path) -> None:
    (src / "notes.txt").write_text("plain data\n")


TREE_EDITS = {
    f.__name__: f for f in (add_fifo, add_escaping_link, add_loop, add_sparse, add_inner_link, break_main, add_file)
}


def cache_entries(cache: Path) -> set[str]:
    kind_dir = cache / "go"
    return {p.name for p in kind_dir.iterdir()} if kind_dir.is_dir() else set()


@pytest.fixture(scope="module")
def cache(hello_go_build, tmp_path_factory) -> Path:
    """A cache of this module's own, whose Go build cache is the session's (warm)."""
    root = tmp_path_factory.mktemp("hardening-cache")
    (root / "go-toolchain").symlink_to(session_cache(hello_go_build) / "go-toolchain")
    return root


def run_build(recipe_dir: Path, out: Path) -> tuple[int, str]:
    try:
        build_recipe(build_context(load_recipe(recipe_dir), out))
    except UserError as exc:
        return 2, str(exc)
    except VerificationFailed as exc:
        return 1, str(exc)
    return 0, ""


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    recipe_edit=st.sampled_from(sorted(RECIPE_EDITS)),
    tree_edits=st.lists(st.sampled_from(sorted(TREE_EDITS)), max_size=2, unique=True),
)
def test_a_generated_build_exits_0_1_or_2_and_a_failure_leaves_nothing(cache, recipe_edit, tree_edits):
    work = Path(tempfile.mkdtemp(prefix="hardening-"))
    try:
        src = work / "recipe"
        shutil.copytree(HELLO_GO, src)
        old, new = RECIPE_EDITS[recipe_edit]
        text = (src / "recipe.toml").read_text()
        (src / "recipe.toml").write_text(text.replace(old, new, 1) if old else text)
        for name in tree_edits:
            TREE_EDITS[name](src)
        before = cache_entries(cache)
        out = work / "out"
        with environment(BUILDKIT_CACHE=str(cache), SOURCE_DATE_EPOCH="1700000000"):
            code, message = run_build(src, out)
        assert code in (0, 1, 2)
        assert "\n" not in message
        if code == 0:
            assert (out / "payload" / "app" / "hello-go").is_file()
            return
        assert not out.exists() or list(out.iterdir()) == [], message
        assert cache_entries(cache) == before or code == 1, message  # exit 1 keeps the gate's verdict
    finally:
        shutil.rmtree(work, ignore_errors=True)
