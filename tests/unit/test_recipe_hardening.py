"""Issue 12, the input side: every row of its table is refused at load with one line naming the file
and the key (exit 2), or bounded. In-process on the loader and the build stage's checks; the rows
that need a program (Go, a real build) are in tests/integration/test_hardening_*.py."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from buildkit import sign
from buildkit.build.base import Backend
from buildkit.build.stage import _assemble_into_cache, check_entrypoint, check_out_dir
from buildkit.errors import UserError
from buildkit.recipe import Recipe, load_recipe, secret_patterns
from buildkit.source import SourcePolicy, copy_source, parse_size
from support import REPO

HELLO_GO = REPO / "recipes" / "hello-go"
GIB = 1 << 30


def go_recipe(directory: Path, old: str = "", new: str = "") -> Path:
    """hello-go's recipe in `directory` (a module of its own), with `old` replaced by `new`."""
    directory.mkdir(parents=True, exist_ok=True)
    text = (HELLO_GO / "recipe.toml").read_text()
    assert old in text, f"the test's anchor {old!r} is not in hello-go's recipe"
    (directory / "recipe.toml").write_text(text.replace(old, new, 1) if old else text)
    (directory / "go.mod").write_text("module example.com/t\n")
    (directory / "main.go").write_text("package main\n\nfunc main() {}\n")
    return directory / "recipe.toml"


def refusal(recipe: Path, policy: SourcePolicy | None = None) -> str:
    with pytest.raises(UserError) as caught:
        load_recipe(recipe, policy or SourcePolicy())
    message = str(caught.value)
    assert "\n" not in message, message
    return message


USER = 'user = { name = "hello", uid = 10001, gid = 10001 }'
ENV = 'env = { LOG_LEVEL = "info" }'
ARGS = 'args = ["-listen", ":8080", "-token-file", "/run/secrets/debug_token"]'
WRITABLE = 'writable = ["/var/lib/hello"]'
ENTRY = 'entrypoint = "/app/hello-go"'
DNS = 'dns = ["1.1.1.1", "9.9.9.9"]'

# (edit of hello-go's recipe, dotted key the message names, words it holds)
REFUSED = {
    "uid 2^32": ((USER, USER.replace("uid = 10001", "uid = 4294967296")), "run.user.uid", "out of range"),
    "gid 2^32": ((USER, USER.replace("gid = 10001", "gid = 4294967296")), "run.user.gid", "out of range"),
    "uid -1": ((USER, USER.replace("uid = 10001", "uid = -1")), "run.user.uid", "out of range"),
    "uid 65535": ((USER, USER.replace("uid = 10001", "uid = 65535")), "run.user.uid", "out of range"),
    "uid of nobody": ((USER, USER.replace("uid = 10001", "uid = 65534")), "run.user.uid", "out of range"),
    "gid of nogroup": ((USER, USER.replace("gid = 10001", "gid = 65533")), "run.user.gid", "Alpine's base group"),
    "uid of Alpine's ntp": ((USER, USER.replace("uid = 10001", "uid = 123")), "run.user", "Alpine's base account"),
    "name with a newline": (('name = "hello-go"', 'name = "abc\\n"'), "name", "lowercase letters"),
    "secret named .": (("[secrets.debug_token]", '[secrets."."]'), 'secrets."."', "file names"),
    "secret named ..": (("[secrets.debug_token]", '[secrets.".."]'), 'secrets.".."', "file names"),
    "writable //proc": ((WRITABLE, 'writable = ["//proc"]'), "run.writable.0", "not under /proc"),
    "writable //run/secrets": ((WRITABLE, 'writable = ["//run/secrets"]'), "run.writable.0", "not under"),
    "writable not normal": ((WRITABLE, 'writable = ["/var//lib/./hello/"]'), "run.writable.0", "'/var/lib/hello'"),
    "entrypoint /": ((ENTRY, 'entrypoint = "/"'), "run.entrypoint", "absolute path inside the payload"),
    "entrypoint //": ((ENTRY, 'entrypoint = "//"'), "run.entrypoint", "absolute path inside the payload"),
    "entrypoint not normal": ((ENTRY, 'entrypoint = "/app/./hello-go"'), "run.entrypoint", "'/app/hello-go'"),
    "env DB_PASS": ((ENV, 'env = { DB_PASS = "hunter2" }'), "run.env.DB_PASS", "looks like a secret"),
    "env STRIPE_KEY": ((ENV, 'env = { STRIPE_KEY = "hunter2" }'), "run.env.STRIPE_KEY", "looks like a secret"),
    "env AUTH header": ((ENV, 'env = { UPSTREAM_AUTH = "Basic x" }'), "run.env.UPSTREAM_AUTH", "looks like a secret"),
    "env token value": (
        (ENV, 'env = { UPSTREAM = "sk_live_4eC39HqLyjWDarjtT1zdp7dc" }'),
        "run.env.UPSTREAM",
        "looks like a credential",
    ),
    "env random value": (
        (ENV, 'env = { SETTING = "q8Zr2LmX0vT4nB7cW1yK5hJ3" }'),
        "run.env.SETTING",
        "looks like a credential",
    ),
    "env hex value": ((ENV, f'env = {{ SETTING = "{"9f86d081884c7d65" * 2}" }}'), "run.env.SETTING", "credential"),
    "env url with a password": (
        (ENV, 'env = { DATABASE = "postgres://app:hunter2@db/app" }'),
        "run.env.DATABASE",
        "credential",
    ),
    "arg after -token": ((ARGS, 'args = ["-token", "hunter2"]'), "run.args.1", "'token' looks like a secret"),
    "arg --password=": ((ARGS, 'args = ["--password=hunter2"]'), "run.args.0", "'password' looks like a secret"),
    "arg github token": (
        (ARGS, 'args = ["-upstream", "ghp_16C7e42F292c6912E7710c838347Ae178B4a"]'),
        "run.args.1",
        "credential",
    ),
    "arg aws key id": ((ARGS, 'args = ["AKIAIOSFODNN7EXAMPLE"]'), "run.args.0", "credential"),
    "egress 0.0.0.0/0": ((DNS, 'dns = ["0.0.0.0/0"]'), "egress.dns.0", "catch-all"),
    "egress ::/0": ((DNS, 'dns = ["::/0"]'), "egress.dns.0", "catch-all"),
    "egress /7": ((DNS, 'dns = ["10.0.0.0/7"]'), "egress.dns.0", "allow_any"),
    "egress telemetry 2000::/3": (
        ('address = "192.0.2.10"', 'address = "2000::/3"'),
        "egress.telemetry.0.address",
        "catch-all",
    ),
}


@pytest.mark.parametrize("edit, key, words", REFUSED.values(), ids=REFUSED.keys())
def test_each_refused_input_is_one_line_naming_file_and_key(tmp_path, edit, key, words):
    recipe = go_recipe(tmp_path / "r", *edit)
    message = refusal(recipe)
    assert message.startswith(f"{recipe.resolve()}: {key}: "), message
    assert words in message


ACCEPTED = {
    "uid 65533": (USER, USER.replace("uid = 10001", "uid = 65533")),
    "secret path in env": (ENV, 'env = { DB_PASSWORD_FILE = "/run/secrets/debug_token" }'),
    "secret path after a flag": (ARGS, 'args = ["--password", "/run/secrets/debug_token"]'),
    "a boolean flag named like a secret": (ARGS, 'args = ["--no-auth", "-listen", ":8080"]'),
    "plain settings": (ENV, 'env = { LOG_LEVEL = "debug", PYTHONPATH = "/app/lib", GREETING = "hello world" }'),
    "a /8": (DNS, 'dns = ["10.0.0.0/8"]'),
    "a catch-all with allow_any": (DNS, 'dns = ["0.0.0.0/0", "::/0"]\nallow_any = true'),
}


@pytest.mark.parametrize("edit", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_what_is_not_refused(tmp_path, edit):
    assert isinstance(load_recipe(go_recipe(tmp_path / "r", *edit)), Recipe)


def test_the_secret_patterns_load_and_match_their_own_examples():
    patterns = secret_patterns()
    assert patterns.secret_name("db_password") and patterns.secret_name("X-Api-Key")
    assert not patterns.secret_name("LOG_LEVEL")
    assert patterns.token_like("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig")
    assert not any(map(patterns.token_like, ("info", ":8080", "/app/main.py", "python3.11", "hello world")))


# --- the source tree ------------------------------------------------------------------------------


def test_source_outside_the_recipe_directory_is_refused(tmp_path):
    recipe = go_recipe(tmp_path / "r", 'source = "."', 'source = "/etc"')
    message = refusal(recipe)
    assert f"{recipe.resolve()}: source: " in message and "outside the recipe's directory" in message


def test_source_symlink_to_etc_is_refused(tmp_path):
    recipe = go_recipe(tmp_path / "r", 'source = "."', 'source = "etc"')
    (tmp_path / "r" / "etc").symlink_to("/etc")
    assert "resolves to /etc, outside" in refusal(recipe)


def test_allow_source_outside_names_the_directory_that_may_hold_it(tmp_path):
    shared = tmp_path / "shared"
    go_recipe(shared)
    recipe = go_recipe(tmp_path / "r", 'source = "."', f'source = "{shared}"')
    assert "outside the recipe's directory" in refusal(recipe)
    assert load_recipe(recipe, SourcePolicy(allowed_roots=(shared,))).source_dir == shared.resolve()


def special_file(directory: Path, kind: str) -> Path:
    path = directory / kind.lower()
    if kind == "FIFO":
        os.mkfifo(path)
    else:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(path))
    return path


@pytest.mark.parametrize("kind", ["FIFO", "socket"])
def test_a_special_file_in_the_source_is_refused_by_name(tmp_path, kind):
    recipe = go_recipe(tmp_path / "r")
    nested = tmp_path / "r" / "sub"
    nested.mkdir()
    path = special_file(nested, kind)
    message = refusal(recipe)
    assert f"source: {path}: a {kind} in the source tree" in message


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_a_character_device_is_refused_never_copied(tmp_path):
    recipe = go_recipe(tmp_path / "r")
    os.mknod(tmp_path / "r" / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))  # /dev/zero
    assert "zero: a character device in the source tree" in refusal(recipe)


LINKS = {
    "loop": (("loop", "loop"), "a symlink loop"),
    "to nothing": (("dangling", "nowhere"), "a symlink to nothing"),
    "out of the tree": (("up", "../outside"), "outside the source tree"),
    "absolute": (("abs", "/etc/shadow"), "an absolute symlink"),
}


@pytest.mark.parametrize("link, words", LINKS.values(), ids=LINKS.keys())
def test_symlinks_are_followed_only_inside_the_tree(tmp_path, link, words):
    recipe = go_recipe(tmp_path / "r", 'source = "."', 'source = "src"')
    src = tmp_path / "r" / "src"
    go_recipe(src)
    (tmp_path / "r" / "outside").write_text("secret\n")
    name, target = link
    (src / name).symlink_to(target)
    message = refusal(recipe)
    assert words in message and str(src / name) in message


def test_a_symlink_inside_the_tree_is_kept_as_a_link(tmp_path):
    src = tmp_path / "src"
    go_recipe(src)
    (src / "lib").mkdir()
    (src / "lib" / "x.txt").write_text("x")
    (src / "alias").symlink_to("lib/x.txt")
    copy_source(src, tmp_path / "copy", SourcePolicy())
    assert os.readlink(tmp_path / "copy" / "alias") == "lib/x.txt"
    assert (tmp_path / "copy" / "lib" / "x.txt").read_text() == "x"


def test_a_big_sparse_file_is_refused_before_a_byte_is_read(tmp_path):
    recipe = go_recipe(tmp_path / "r")
    with open(tmp_path / "r" / "huge.bin", "wb") as fh:
        fh.truncate(2 * GIB)  # sparse: nothing on disk
    message = refusal(recipe)
    assert "more than the bound of 1073741824 bytes" in message and "--max-source-size" in message
    assert isinstance(load_recipe(recipe, SourcePolicy(max_bytes=3 * GIB)), Recipe)


def test_the_copy_checks_the_tree_again_and_stops_at_the_bound(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "grows").write_bytes(b"x" * 200)
    with pytest.raises(UserError, match="more than the bound of 150"):
        copy_source(src, tmp_path / "copy", SourcePolicy(max_bytes=150))
    os.mkfifo(src / "fifo")
    with pytest.raises(UserError, match="a FIFO"):
        copy_source(src, tmp_path / "copy2", SourcePolicy())


@pytest.mark.parametrize(
    "text, size", [("1073741824", GIB), ("512M", 512 << 20), ("1GiB", GIB), ("2g", 2 * GIB), ("64k", 64 << 10)]
)
def test_sizes_parse_in_binary_units(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "0", "-1", "1.5G", "lots", "1Q"])
def test_a_bad_size_is_a_user_error(text):
    with pytest.raises(UserError, match="--max-source-size"):
        parse_size(text)


# --- the out dir, the entrypoint in the payload -----------------------------------------------------


@pytest.mark.parametrize("name", ["payload", "sdcard"])
def test_out_dir_holding_a_symlink_where_a_directory_goes_is_refused(tmp_path, name):
    out = tmp_path / "out"
    out.mkdir()
    (out / name).symlink_to(tmp_path)
    with pytest.raises(UserError, match=f"{out / name} is a symlink, where buildkit writes a directory"):
        check_out_dir(out)
    (out / name).unlink()
    (out / name).write_text("a file")
    with pytest.raises(UserError, match="is not a directory"):
        check_out_dir(out)


def test_out_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "out").write_text("")
    with pytest.raises(UserError, match="is a file"):
        check_out_dir(tmp_path / "out")


def payload_with(root: Path, entrypoint: str, make) -> Recipe:
    recipe = load_recipe(go_recipe(root / "r", ENTRY, f'entrypoint = "{entrypoint}"'))
    make(root / "payload")
    return recipe


def executable(path: Path, mode: int = 0o755) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(mode)


def link(path: Path, target: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


ENTRYPOINTS_REFUSED = {
    "missing": ("/app/x", lambda p: p.mkdir(), "not in the payload"),
    "a directory": ("/app", lambda p: (p / "app").mkdir(parents=True), "not a regular file"),
    "not executable": ("/app/x", lambda p: executable(p / "app" / "x", 0o644), "mode 0644"),
    "owner-only executable": ("/app/x", lambda p: executable(p / "app" / "x", 0o700), "not executable"),
    "a link out of the payload": (
        "/app/x",
        lambda p: link(p / "app" / "x", "../../../../bin/sh"),
        "not in the payload",
    ),
    "a link loop": ("/app/x", lambda p: link(p / "app" / "x", "x"), "symlink loop"),
    "through a file": ("/app/x/y", lambda p: executable(p / "app" / "x"), "not in the payload"),
}


@pytest.mark.parametrize("entrypoint, make, words", ENTRYPOINTS_REFUSED.values(), ids=ENTRYPOINTS_REFUSED.keys())
def test_the_entrypoint_must_be_an_executable_file_of_the_payload(tmp_path, entrypoint, make, words):
    recipe = payload_with(tmp_path, entrypoint, make)
    with pytest.raises(UserError, match=words) as caught:
        check_entrypoint(recipe, tmp_path / "payload")
    assert str(caught.value).startswith(f"{recipe.path}: run.entrypoint: ")


def test_an_entrypoint_symlink_resolving_inside_the_payload_is_fine(tmp_path):
    def make(p: Path) -> None:
        executable(p / "usr" / "bin" / "python3.11")
        link(p / "usr" / "bin" / "python3", "python3.11")
        link(p / "app" / "run", "/usr/bin/python3")  # absolute: resolved with the payload as /

    check_entrypoint(payload_with(tmp_path, "/app/run", make), tmp_path / "payload")


def test_a_bad_entrypoint_leaves_nothing_in_the_cache(tmp_path):
    recipe = load_recipe(go_recipe(tmp_path / "r", ENTRY, 'entrypoint = "/app/missing"'))
    cached = tmp_path / "cache" / "go" / ("k" * 64)
    backend = Backend(toolchain={}, assemble=lambda payload: executable(payload / "app" / "other"))
    with pytest.raises(UserError, match="not in the payload"):
        _assemble_into_cache(backend, cached, recipe)
    assert list((tmp_path / "cache" / "go").iterdir()) == []


# --- keys ---------------------------------------------------------------------------------------------


@pytest.fixture
def readable_key(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv(sign.INSECURE_KEY_ENV, raising=False)
    sign.keygen(tmp_path / "k.key", tmp_path / "k.pub", passphrase=None)
    (tmp_path / "k.key").chmod(0o644)
    return tmp_path / "k.key"


def test_a_secret_key_others_can_read_is_refused(readable_key):
    with pytest.raises(UserError, match=r"mode 0644: group or others may read it; `chmod 600"):
        sign.resolve_signing_key(readable_key, None, dev_key_dir=None)


def test_allow_insecure_key_and_its_environment_variable_let_it_through(readable_key, monkeypatch):
    assert sign.resolve_signing_key(readable_key, None, dev_key_dir=None, allow_insecure=True).key_id
    monkeypatch.setenv(sign.INSECURE_KEY_ENV, "1")
    assert sign.resolve_signing_key(readable_key, None, dev_key_dir=None).key_id


def test_the_development_key_is_written_0600_and_its_mode_checked(tmp_path, monkeypatch):
    monkeypatch.delenv(sign.INSECURE_KEY_ENV, raising=False)
    sign.resolve_signing_key(None, None, dev_key_dir=tmp_path / "dev")
    dev_key = tmp_path / "dev" / sign.DEV_SECRET_KEY
    assert stat.S_IMODE(dev_key.stat().st_mode) == 0o600
    dev_key.chmod(0o640)
    with pytest.raises(UserError, match="mode 0640"):
        sign.resolve_signing_key(None, None, dev_key_dir=tmp_path / "dev")


def test_sign_cli_refuses_a_readable_key_and_takes_the_option(clean_cli, readable_key, payload_image):
    refused = clean_cli("sign", payload_image, "--key", readable_key)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "group or others may read it" in refused.stderr
    allowed = clean_cli("sign", payload_image, "--key", readable_key, "--allow-insecure-key")
    assert allowed.returncode == 0, allowed.stderr
