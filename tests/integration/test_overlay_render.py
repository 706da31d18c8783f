"""The rendered overlay as Alpine's initramfs receives it: read back with busybox tar, its accounts,
runlevels, apk world, sysctl, scripts (shellcheck) and the absence of anything secret."""

from __future__ import annotations

import base64
import gzip
import io
import os
import re
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

from buildkit.errors import UserError
from buildkit.features import load_feature
from buildkit.fsutil import DEFAULT_EPOCH
from buildkit.package import apkovl_bytes, render_overlay
from buildkit.recipe import load_recipe
from support import require_tools
from support.package import (
    NAME,
    SECRET_VALUE,
    apkovl_members,
    unpack_like_initramfs,
)

BUSYBOX_LINE = re.compile(r"^(?P<mode>\S{10}) (?P<owner>\S+)\s+(?P<size>\d+) (?P<date>\S+ \S+) (?P<name>.+)$")


@pytest.fixture(scope="module")
def listing(packaged_demo) -> dict[str, dict[str, str]]:
    """`busybox tar -tzvf` of the apkovl, by path."""
    require_tools("busybox")
    out = subprocess.run(
        ["busybox", "tar", "-tzvf", str(packaged_demo.package.apkovl)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TZ": "UTC"},
    ).stdout
    entries = {}
    for line in out.splitlines():
        match = BUSYBOX_LINE.match(line)
        assert match, line
        name, _, target = match["name"].partition(" -> ")
        entries[name.rstrip("/")] = {**match.groupdict(), "target": target}
    return entries


@pytest.fixture(scope="module")
def unpacked(packaged_demo, tmp_path_factory) -> Path:
    return unpack_like_initramfs(packaged_demo.package.apkovl, tmp_path_factory.mktemp("unpacked"))


def test_busybox_reads_paths_relative_to_root_owned_by_root(listing):
    assert listing, "empty apkovl"
    for name, entry in listing.items():
        assert not name.startswith(("/", "./")) and ".." not in name.split("/"), name
        assert entry["owner"] == "root/root", (name, entry["owner"])
        assert entry["date"] == "2026-01-01 00:00:00", (name, entry["date"])  # SOURCE_DATE_EPOCH unset


def test_modes_are_kept(listing, unpacked):
    expected = {
        f"etc/init.d/{NAME}": "-rwxr-xr-x",
        "usr/libexec/buildkit/payload": "-rwxr-xr-x",
        "etc/shadow": "-rw-r-----",
        "etc/passwd": "-rw-r--r--",
        "etc/nftables.nft": "-rw-r--r--",
        "etc/buildkit": "drwxr-xr-x",
    }
    for path, mode in expected.items():
        assert listing[path]["mode"] == mode, path
        assert stat.filemode((unpacked / path).stat().st_mode) == mode, path


def test_runlevels_are_absolute_links_like_genapkovl(listing, unpacked):
    runlevels = {
        path: entry["target"]
        for path, entry in listing.items()
        if path.startswith("etc/runlevels/") and entry["mode"].startswith("l")
    }
    for path, target in runlevels.items():
        assert target == f"/etc/init.d/{path.rsplit('/', 1)[1]}", (path, target)
        assert os.readlink(unpacked / path) == target
    enabled = {path.removeprefix("etc/runlevels/") for path in runlevels}
    for service in (
        "sysinit/devfs",
        "sysinit/mdev",
        "sysinit/modloop",
        "sysinit/hwdrivers",
        "boot/modules",
        "boot/sysctl",
        "boot/nftables",
        "boot/networking",
        "boot/hostname",
        "default/ntpd",
        f"default/{NAME}",
        "shutdown/killprocs",
        "shutdown/mount-ro",
    ):
        assert service in enabled, service
    assert "etc/.default_boot_services" not in listing  # explicit links instead of the marker
    assert not any(path.startswith("etc/local.d") for path in listing)


def test_archive_is_ustar_sorted_and_gzip_has_no_name_or_mtime(packaged_demo):
    raw = packaged_demo.package.apkovl.read_bytes()
    assert raw[:3] == b"\x1f\x8b\x08" and raw[3] & 0x08 == 0, "gzip header carries a file name"
    assert raw[4:8] == b"\0\0\0\0", "gzip header carries an mtime"
    tar_bytes = gzip.decompress(raw)
    assert tar_bytes[257:265] == b"ustar\x0000", "not a POSIX USTAR header"
    names = list(apkovl_members(packaged_demo.package.apkovl))
    assert names == sorted(names)
    with tarfile.open(packaged_demo.package.apkovl) as tar:
        assert all(m.type in (tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE) for m in tar.getmembers())


def test_accounts_are_complete_and_the_service_user_cannot_log_in(unpacked):
    passwd = [line.split(":") for line in (unpacked / "etc/passwd").read_text().splitlines()]
    group = [line.split(":") for line in (unpacked / "etc/group").read_text().splitlines()]
    shadow = [line.split(":") for line in (unpacked / "etc/shadow").read_text().splitlines()]
    assert ["demo", "x", "10001", "10001", "buildkit payload demo", "/var/empty", "/sbin/nologin"] in passwd
    assert ["demo", "x", "10001", ""] in group
    assert [row[0] for row in shadow] == [row[0] for row in passwd]
    assert dict((row[0], row[1]) for row in shadow)["demo"] == "!"
    assert dict((row[0], row[1]) for row in shadow)["root"] == "*"  # no console password either
    for table in (passwd, group):
        assert len({row[0] for row in table}) == len(table)
        assert len({row[2] for row in table}) == len(table)
    assert {"root", "nobody"} <= {row[0] for row in passwd}
    assert {"tty", "shadow", "nogroup"} <= {row[0] for row in group}


def test_apk_world_is_exactly_what_the_overlay_uses(unpacked):
    assert (unpacked / "etc/apk/world").read_text().split() == [
        "alpine-base",
        "bubblewrap",
        "minisign",
        "nftables",
        "setpriv",
        "tini-static",
    ]


def test_public_key_and_configuration_are_rendered(unpacked, packaged_demo):
    assert (unpacked / "etc/buildkit/buildkit.pub").read_text() == packaged_demo.package.public_key.read_text()
    assert packaged_demo.key.key_id in (unpacked / "etc/buildkit/buildkit.pub").read_text()
    conf = (unpacked / f"etc/buildkit/{NAME}.conf").read_text()
    assert f"BK_BUILD_EPOCH={DEFAULT_EPOCH}\n" in conf and f"BK_IMAGE={NAME}.squashfs\n" in conf
    assert (unpacked / "etc/hostname").read_text() == f"{NAME}\n"
    assert '"-N -p 10.123.0.1"' in (unpacked / "etc/conf.d/ntpd").read_text()


def test_nothing_secret_ships(packaged_demo):
    """No private key (ours raw or base64, PEM, minisign, SSH), no SSH host key, no provisioned secret."""
    private = packaged_demo.key.private.private_bytes_raw()
    forbidden = [
        private,
        base64.b64encode(private)[:40],
        b"PRIVATE KEY",
        b"secret key",
        b"BEGIN OPENSSH",
        SECRET_VALUE.encode(),
    ]
    with tarfile.open(packaged_demo.package.apkovl) as tar:
        for member in tar.getmembers():
            assert not re.search(r"(ssh_host_|\.key$|\.pem$|id_rsa|id_ed25519|secrets?/)", member.name), member.name
            if member.isfile():
                data = tar.extractfile(member).read()
                for blob in forbidden:
                    assert blob not in data, (member.name, blob)
    for path in packaged_demo.package.out_dir.rglob("*"):
        if path.is_file():
            assert not any(blob in path.read_bytes() for blob in forbidden[:2]), path


def test_sysctl_keys_exist_on_a_linux_kernel(unpacked):
    conf = (unpacked / "etc/sysctl.d/90-buildkit.conf").read_text()
    settings = [line.split("=")[0].strip() for line in conf.splitlines() if line.strip() and not line.startswith("#")]
    assert "net.ipv4.tcp_syncookies" in settings and "kernel.kptr_restrict" in settings
    assert not any(key.startswith("user.max_user_namespaces") for key in settings)  # bwrap needs them
    missing = [key for key in settings if not Path("/proc/sys", *key.split(".")).exists()]
    assert missing == []


def test_scripts_are_shellcheck_clean(unpacked):
    require_tools("shellcheck")
    scripts = [
        unpacked / "usr/libexec/buildkit/payload",
        unpacked / f"etc/init.d/{NAME}",
        unpacked / f"etc/buildkit/{NAME}.conf",
    ]
    result = subprocess.run(
        ["shellcheck", "--shell=sh", "--severity=style", *map(str, scripts)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def test_configuration_quotes_arguments_and_environment_for_sh(unpacked):
    conf = unpacked / f"etc/buildkit/{NAME}.conf"
    out = subprocess.run(
        [
            "busybox",
            "sh",
            "-c",
            f'. {conf}; eval "set -- $BK_ARGV"; printf "<%s>" "$@"; echo; '
            f'eval "set -- $BK_ENV_ARGS"; printf "<%s>" "$@"',
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert out[0] == "</app/service><-listen><:8080><it's two words>"
    assert out[1] == "<--setenv><GREETING><hello world><--setenv><PATH><" + "/usr/local/bin:/usr/bin:/bin>"


def test_rendering_is_deterministic_and_follows_the_epoch(packaged_demo):
    recipe = load_recipe(packaged_demo.recipe_dir)
    first = apkovl_bytes(render_overlay(recipe, packaged_demo.key.public(), 0), 0)
    assert first == apkovl_bytes(render_overlay(recipe, packaged_demo.key.public(), 0), 0)
    later = apkovl_bytes(render_overlay(recipe, packaged_demo.key.public(), 1700000000), 1700000000)
    assert later != first
    with tarfile.open(fileobj=io.BytesIO(later), mode="r:gz") as tar:
        assert {m.mtime for m in tar.getmembers()} == {1700000000}


def test_unknown_placeholder_in_the_skeleton_is_an_error(packaged_demo, tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "motd.in").write_text("hello @NO_SUCH_VALUE@\n")
    (tmp_path / "feature.toml").write_text('description = "a feature with a typo"\n')
    with pytest.raises(UserError, match="unknown placeholder @NO_SUCH_VALUE@"):
        render_overlay(
            load_recipe(packaged_demo.recipe_dir), packaged_demo.key.public(), 0, (load_feature(tmp_path, "typo"),)
        )
