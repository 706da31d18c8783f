"""`buildkit image`: the SD card, read back with the tools that read real cards (sfdisk, mtools).

The inputs are made here (support.alpine): Alpine's Raspberry Pi release and mirrors cannot be
downloaded on this machine, so the tarball is laid out as alpine-rpi-<version>-armhf.tar.gz is, and
the apk repository is signed with the tests' own key pair (trusted with --apk-keys).
"""

from __future__ import annotations

import filecmp
import functools
import http.server
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from buildkit.image import build_image
from support.alpine import (
    ALL_PACKAGES,
    ARCH,
    EXPECTED_ON_CARD,
    WORLD_PACKAGES,
    Pkg,
    SigningKey,
    gzip_streams_of,
    new_key,
    release_files,
    write_release_tarball,
    write_repository,
)
from support.cli import no_traceback, without_progress

DEVICE = "web1"
DEVICE_FILES = {"secrets/demo/token": b"s3cret-token\n", "secrets/demo/identity.pub": b"untrusted comment: k\nRWQ=\n"}
MIB = 1 << 20


@dataclass(frozen=True)
class Inputs:
    out: Path
    tarball: Path
    repo: Path
    keys: Path
    key: SigningKey


@pytest.fixture(scope="module")
def inputs(packaged_demo, tmp_path_factory) -> Inputs:
    base = tmp_path_factory.mktemp("image-inputs")
    key = new_key()
    out = base / "out"
    shutil.copytree(packaged_demo.package.out_dir, out)
    for rel, data in DEVICE_FILES.items():  # as `buildkit package --device web1` lays them out
        (out / "devices" / DEVICE / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / "devices" / DEVICE / rel).write_bytes(data)
    return Inputs(
        out=out,
        tarball=write_release_tarball(base / "alpine-rpi-3.21.0-armhf.tar.gz", key),
        repo=write_repository(base / "repo" / "main", ALL_PACKAGES, key),
        keys=key.write_public(base / "keys").parent,
        key=key,
    )


def image_args(inputs: Inputs, *extra: object) -> list[object]:
    return [
        "image",
        inputs.out,
        "--alpine",
        inputs.tarball,
        "--apk-repo",
        inputs.repo,
        "--apk-keys",
        inputs.keys,
        *extra,
    ]


@pytest.fixture(scope="module")
def card(inputs, buildkit_cli, tmp_path_factory) -> Path:
    image = tmp_path_factory.mktemp("card") / "card.img"
    proc = subprocess.run(
        [*buildkit_cli, *map(str, image_args(inputs, "--device", DEVICE, "-o", image))],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "SOURCE_DATE_EPOCH": "1767225600"},
    )
    assert proc.returncode == 0, proc.stderr
    return image


def partition_table(image: Path) -> dict:
    return json.loads(subprocess.run(["sfdisk", "-J", str(image)], capture_output=True, text=True, check=True).stdout)[
        "partitiontable"
    ]


def offset_of(image: Path) -> int:
    return partition_table(image)["partitions"][0]["start"] * 512


def mtools(tool: str, image: Path, *args: str) -> str:
    env = {"MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": "/dev/null", "PATH": "/usr/bin:/bin", "TZ": "UTC"}
    proc = subprocess.run(
        [tool, "-i", f"{image}@@{offset_of(image)}", *args], capture_output=True, env=env, check=True, timeout=60
    )
    return proc.stdout.decode(errors="replace")


def card_file(image: Path, path: str) -> bytes:
    env = {"MTOOLS_SKIP_CHECK": "1", "MTOOLSRC": "/dev/null", "PATH": "/usr/bin:/bin"}
    return subprocess.run(
        ["mcopy", "-i", f"{image}@@{offset_of(image)}", f"::/{path}", "-"], capture_output=True, env=env, check=True
    ).stdout


def test_the_card_is_one_bootable_fat32_partition_aligned_to_4_mib(card):
    table = partition_table(card)
    assert table["label"] == "dos"
    (partition,) = table["partitions"]
    assert partition["type"] == "c" and partition.get("bootable") is True
    assert partition["start"] * 512 % (4 * MIB) == 0
    assert (partition["start"] + partition["size"]) * 512 == card.stat().st_size == 256 * MIB
    dump = subprocess.run(["sfdisk", "-d", str(card)], capture_output=True, text=True, check=True).stdout
    assert "start=        8192" in dump and "type=c, bootable" in dump
    info = mtools("minfo", card, "::")
    assert "PISECBOOT" in info and 'disk type="FAT32   "' in info


def test_the_card_holds_the_boot_files_the_package_and_the_device_files(card, inputs, packaged_demo):
    listing = mtools("mdir", card, "-/", "-b", "::")
    names = {line.removeprefix("::/") for line in listing.split()}
    package = packaged_demo.package
    for expected in (
        "bootcode.bin",
        "start.elf",
        "fixup.dat",
        "config.txt",
        "bcm2708-rpi-b-plus.dtb",
        "overlays/disable-bt.dtbo",
        "boot/vmlinuz-rpi",
        "boot/initramfs-rpi",
        "boot/modloop-rpi",
        package.apkovl.name,
        package.payload_image.name,
        "manifest.json",
        "manifest.json.minisig",
        "buildkit.pub",
        *DEVICE_FILES,
        "apks/.boot_repository",
        f"apks/{ARCH}/APKINDEX.tar.gz",
    ):
        assert expected in names, f"{expected} not on the card: {sorted(names)}"
    assert card_file(card, package.apkovl.name) == package.apkovl.read_bytes()
    assert card_file(card, "manifest.json.minisig") == package.signature.read_bytes()
    assert card_file(card, "secrets/demo/token") == DEVICE_FILES["secrets/demo/token"]
    assert ".alpine-release" in names  # the release's own files, all of them


def test_cmdline_pins_the_apkovl_and_the_console_and_usercfg_turns_the_rng_on(card, packaged_demo):
    cmdline = card_file(card, "cmdline.txt").decode()
    assert cmdline.count("\n") == 1 and not cmdline.endswith(" \n")  # the firmware reads one line
    assert cmdline == (
        "modules=loop,squashfs,sd-mod,usb-storage quiet console=tty1 "
        f"apkovl=/dev/mmcblk0p1:vfat:/{packaged_demo.package.apkovl.name} console=ttyAMA0,115200\n"
    )
    assert card_file(card, "usercfg.txt") == b"dtparam=random=on\n"


def test_the_boot_repository_holds_the_world_and_its_dependencies_with_the_signed_index(card, inputs):
    listing = mtools("mdir", card, "-/", "-b", f"::/apks/{ARCH}")
    files = sorted(Path(line).name for line in listing.split())
    expected = sorted(p.file_name for p in ALL_PACKAGES if p.name in EXPECTED_ON_CARD)
    assert files == sorted([*expected, "APKINDEX.tar.gz"])  # no unneeded-extra
    assert card_file(card, f"apks/{ARCH}/APKINDEX.tar.gz") == (inputs.repo / ARCH / "APKINDEX.tar.gz").read_bytes()
    nft = next(p for p in WORLD_PACKAGES if p.name == "nftables-openrc")  # by install_if
    assert card_file(card, f"apks/{ARCH}/{nft.file_name}") == (inputs.repo / ARCH / nft.file_name).read_bytes()


def test_two_runs_give_the_same_bytes_and_the_directory_holds_the_same_tree(card, inputs, tmp_path):
    again = tmp_path / "again.img"
    result = build_image(
        inputs.out,
        inputs.tarball,
        output=again,
        device=DEVICE,
        apk_repos=[str(inputs.repo)],
        apk_keys=inputs.keys,
        epoch=1767225600,
    )
    assert filecmp.cmp(card, again, shallow=False)
    assert result.sha256 is not None and result.partition_offset == 4 * MIB
    info = mtools("minfo", card, "::")
    assert f"serial number: {result.volume_id.upper()}\n" in info
    assert partition_table(card)["id"] == f"0x{result.disk_id}"

    tree = tmp_path / "mounted-card"
    in_dir = build_image(
        inputs.out, inputs.tarball, directory=tree, device=DEVICE, apk_repos=[str(inputs.repo)], apk_keys=inputs.keys
    )
    extracted = tmp_path / "extracted"
    extracted.mkdir()
    mtools("mcopy", card, "-s", "-n", "::/*", str(extracted))
    on_disk = sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*") if p.is_file())
    assert on_disk == list(in_dir.files) == list(result.files)
    for rel in on_disk:
        assert (tree / rel).read_bytes() == (extracted / rel).read_bytes(), rel


@pytest.fixture
def serve(tmp_path) -> Iterator[functools.partial]:
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(directory: Path) -> str:
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield functools.partial(start)
    for server in servers:
        server.shutdown()
        server.server_close()


def test_packages_come_from_a_mirror_url_with_the_tarballs_version(inputs, serve, tmp_path):
    mirror = tmp_path / "mirror"
    shutil.copytree(inputs.repo, mirror / "v3.21" / "main")
    base = serve(mirror)
    result = build_image(
        inputs.out,
        inputs.tarball,
        directory=tmp_path / "card",
        apk_repos=[f"{base}/{{version}}/main"],
        apk_keys=inputs.keys,
    )
    assert sorted(p.name for p in result.packages) == EXPECTED_ON_CARD
    assert result.alpine_version == "3.21"


# Refusals: each is one line naming what is wrong, exit 2, and no image.


def refused(clean_cli, args: list[object], tmp_path: Path) -> str:
    image = tmp_path / "card.img"
    proc = clean_cli(*args, "-o", image)
    no_traceback(proc)
    assert proc.returncode == 2, proc.stderr
    assert not image.exists() and not list(tmp_path.glob(".card.img.*"))
    (line,) = without_progress(proc.stderr)
    return line


def test_a_world_package_the_repositories_lack_is_exit_2_naming_it(inputs, clean_cli, tmp_path):
    # the release's own boot repository has alpine-base, not the sandbox's packages
    args = ["image", inputs.out, "--alpine", inputs.tarball, "--apk-keys", inputs.keys]
    line = refused(clean_cli, args, tmp_path)
    for name in ("bubblewrap", "minisign", "nftables", "setpriv", "tini-static"):
        assert f"'{name}' (needed by the world (etc/apk/world))" in line, line
    assert "would boot without them" in line


def test_a_tampered_index_signature_is_exit_2(inputs, clean_cli, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(inputs.repo, repo)
    index = repo / ARCH / "APKINDEX.tar.gz"
    streams = gzip_streams_of(index.read_bytes())
    other = write_repository(tmp_path / "other", [*ALL_PACKAGES, Pkg("evil")], inputs.key)
    index.write_bytes(streams[0] + b"".join(gzip_streams_of((other / ARCH / "APKINDEX.tar.gz").read_bytes())[1:]))
    line = refused(clean_cli, image_args(inputs)[:5] + [repo, "--apk-keys", inputs.keys], tmp_path)
    assert "APKINDEX.tar.gz: the signature by" in line and "does not verify" in line


def test_an_index_signed_by_another_key_is_exit_2(inputs, clean_cli, tmp_path):
    repo = write_repository(tmp_path / "repo", ALL_PACKAGES, new_key("intruder-0badc0de.rsa.pub"))
    line = refused(clean_cli, image_args(inputs)[:5] + [repo, "--apk-keys", inputs.keys], tmp_path)
    assert "intruder-0badc0de.rsa.pub" in line and "none of them a trusted key" in line


def test_a_package_with_a_wrong_checksum_is_exit_2(inputs, clean_cli, tmp_path):
    repo = tmp_path / "repo"
    shutil.copytree(inputs.repo, repo)
    genuine = next(p for p in WORLD_PACKAGES if p.name == "minisign")
    impostor = write_repository(
        tmp_path / "impostor", [Pkg("minisign", genuine.version, files={"x": b"y"})], inputs.key
    )
    (repo / ARCH / genuine.file_name).write_bytes((impostor / ARCH / genuine.file_name).read_bytes())
    line = refused(clean_cli, image_args(inputs)[:5] + [repo, "--apk-keys", inputs.keys], tmp_path)
    assert genuine.file_name in line and ("differs from the index" in line or "the index says" in line), line


def test_the_tarball_must_match_its_sha256(inputs, clean_cli, tmp_path):
    args = image_args(inputs, "--alpine-sha256", "0" * 64)
    line = refused(clean_cli, args, tmp_path)
    assert str(inputs.tarball) in line and "expected " + "0" * 64 in line


def test_a_missing_device_is_exit_2(inputs, clean_cli, tmp_path):
    line = refused(clean_cli, image_args(inputs, "--device", "nosuch"), tmp_path)
    assert "--device nosuch" in line


def test_the_arch_gate_refuses_a_package_built_for_the_host(inputs, clean_cli, tmp_path):
    host_binary = Path(shutil.which("true") or "/bin/true").read_bytes()
    packages = [p for p in ALL_PACKAGES if p.name != "tini-static"]
    packages.append(Pkg("tini-static", "0.19.0-r3", files={"sbin/tini-static": host_binary}))
    repo = write_repository(tmp_path / "repo", packages, inputs.key)
    image = tmp_path / "card.img"
    proc = clean_cli(*image_args(inputs)[:5], repo, "--apk-keys", inputs.keys, "-o", image)
    assert proc.returncode == 1, proc.stderr
    assert "arch gate refused the boot repository" in proc.stderr and "tini-static-0.19.0-r3.apk" in proc.stderr
    assert not image.exists()


def test_a_tarball_without_the_boards_kernel_is_exit_2(inputs, clean_cli, tmp_path):
    files = release_files(inputs.key)
    del files["boot/modloop-rpi"]
    tarball = write_release_tarball(tmp_path / "alpine-rpi-3.21.0-armhf.tar.gz", inputs.key, files)
    line = refused(clean_cli, ["image", inputs.out, "--alpine", tarball, "--apk-keys", inputs.keys], tmp_path)
    assert "not Alpine's Raspberry Pi release" in line and "boot/modloop-rpi" in line


def test_packages_of_another_alpine_release_are_exit_2(inputs, clean_cli, tmp_path):
    repo = write_repository(tmp_path / "repo", ALL_PACKAGES, inputs.key, description="v3.20.3-0-gtests")
    line = refused(clean_cli, image_args(inputs)[:5] + [repo, "--apk-keys", inputs.keys], tmp_path)
    assert "packages of Alpine 3.20, the tarball is Alpine 3.21" in line


def test_a_directory_that_is_not_empty_is_refused_before_any_work(inputs, clean_cli, tmp_path):
    card_dir = tmp_path / "card"
    card_dir.mkdir()
    (card_dir / "old.apkovl.tar.gz").write_bytes(b"from an earlier card")
    proc = clean_cli(*image_args(inputs), "--dir", card_dir)
    assert proc.returncode == 2 and f"--dir {card_dir}: not an empty directory" in proc.stderr
    assert sorted(p.name for p in card_dir.iterdir()) == ["old.apkovl.tar.gz"]


def test_a_profile_file_outside_verify_is_given_by_path(inputs, clean_cli, tmp_path):
    boards = tmp_path / "boards"
    boards.mkdir()
    shutil.copy(Path(__file__).resolve().parents[2] / "verify" / "profiles" / "pi1.toml", boards / "pi1.toml")
    card_dir = tmp_path / "card"
    proc = clean_cli(*image_args(inputs, "--profile", boards / "pi1.toml", "--dir", card_dir))
    no_traceback(proc)
    assert proc.returncode == 0, proc.stderr
    assert (card_dir / "cmdline.txt").is_file()


def test_a_profile_for_another_board_is_exit_2(inputs, clean_cli, tmp_path):
    line = refused(clean_cli, image_args(inputs, "--profile", "armv7"), tmp_path)
    assert "--profile armv7" in line and "built for the profile 'pi1'" in line
