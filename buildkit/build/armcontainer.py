"""ARM programs run in a container of any Docker-API engine, QEMU doing the emulation through the
host's binfmt_misc: how the docker backend of the Python path runs the steps that need ARM code.

A tree on the host becomes a one-layer image of the userland's platform (linux/arm/v5 for armel; a
`docker save` archive, so that the platform survives without a registry), the program runs in a
container with an init (an emulated PID 1 hangs on SIGILL), QEMU_CPU set to the target's CPU in its
environment (so that every process it starts is an ARM1176 too, not QEMU's default CPU), no network
and a timeout. The files it creates under the
declared output directories are copied back into the tree; the container and the image are removed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from buildkit.errors import UserError
from buildkit.fsutil import tar_tree_deterministic
from buildkit.host import BINFMT_DIR, require_qemu_arm

IMAGE_REPOSITORY = "buildkit-pyrootfs"
ENGINE_HINT = (
    "start a Docker-API engine (dockerd, or `podman system service`) and point DOCKER_HOST at it, "
    'or set python.backend = "native"'
)
ARM_STEP_TIMEOUT = 1800.0


def docker_runner(platform: str, qemu_cpu: str, epoch: int) -> DockerRunner:
    """Connect to the engine of DOCKER_HOST (or the default socket) and check binfmt_misc first, so
    that a missing engine or QEMU handler is reported before anything is downloaded."""
    import docker
    from docker.errors import DockerException

    where = os.environ.get("DOCKER_HOST") or "the default socket (unix:///var/run/docker.sock)"
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except DockerException as exc:
        raise UserError(f"no Docker-API engine at {where} ({first_line(exc)}): {ENGINE_HINT}") from None
    check_binfmt_qemu_arm()
    return DockerRunner(client, platform, qemu_cpu, epoch)


def check_binfmt_qemu_arm(binfmt_dir: Path = BINFMT_DIR) -> None:
    require_qemu_arm("the engine cannot run ARM containers", binfmt_dir)


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def arm_step_error(what: str, returncode: int | None, output: str) -> UserError:
    tail = " | ".join(line.strip() for line in output.strip().splitlines()[-4:]) or "no output"
    return UserError(f"{what} failed in the ARM container (as an ARM1176) with exit code {returncode}: {tail}")


class Container(Protocol):
    """The part of docker-py's Container used here (docker-py ships no type information)."""

    def start(self) -> None: ...
    def wait(self, *, timeout: float) -> dict[str, Any]: ...
    def logs(self) -> bytes: ...
    def get_archive(self, path: str) -> tuple[Iterable[bytes], dict[str, Any]]: ...
    def remove(self, *, force: bool) -> None: ...


class ContainerCollection(Protocol):
    def create(self, image: str, command: list[str], **options: object) -> Container: ...


class ImageCollection(Protocol):
    def load(self, data: bytes) -> object: ...
    def remove(self, image: str, *, force: bool, noprune: bool) -> None: ...


class DockerClient(Protocol):
    """The part of docker.DockerClient used here."""

    @property
    def containers(self) -> ContainerCollection: ...
    @property
    def images(self) -> ImageCollection: ...


@dataclass(frozen=True)
class DockerRunner:
    client: DockerClient
    platform: str  # e.g. linux/arm/v5
    qemu_cpu: str  # e.g. arm1176
    epoch: int
    timeout: float = ARM_STEP_TIMEOUT

    def run(self, rootfs: Path, argv: Sequence[str], env: dict[str, str], outputs: Sequence[str], what: str) -> None:
        """Run `argv` with `rootfs` as `/`; copy what it creates under `outputs` back into `rootfs`."""
        from docker.errors import DockerException
        from requests.exceptions import RequestException

        image = load_rootfs_image(self.client, rootfs, self.platform, self.epoch)
        container: Container | None = None
        try:
            container = self.client.containers.create(
                image,
                command=list(argv),
                environment={**env, "QEMU_CPU": self.qemu_cpu},
                init=True,
                network_mode="none",
                platform=self.platform,
                working_dir="/",
            )
            container.start()
            try:
                status = container.wait(timeout=self.timeout)
            except RequestException:
                raise UserError(f"{what} did not finish in the ARM container in {self.timeout:.0f} s") from None
            if status.get("StatusCode") != 0:
                raise arm_step_error(what, status.get("StatusCode"), container.logs().decode(errors="replace"))
            for output in outputs:
                copy_new_files_out(container, output, rootfs)
        except DockerException as exc:
            raise UserError(f"the Docker-API engine failed while {what}: {first_line(exc)}: {ENGINE_HINT}") from None
        finally:
            if container is not None:
                container.remove(force=True)
            self.client.images.remove(image, force=True, noprune=False)


def load_rootfs_image(client: DockerClient, rootfs: Path, platform: str, epoch: int) -> str:
    layer = tar_tree_deterministic(rootfs, epoch, fmt=tarfile.PAX_FORMAT)
    tag = f"{IMAGE_REPOSITORY}:{hashlib.sha256(layer).hexdigest()[:16]}"
    client.images.load(docker_archive(layer, tag, platform))
    return tag


def docker_archive(layer: bytes, tag: str, platform: str) -> bytes:
    """A `docker save` archive of one layer whose config says `platform` (os/architecture/variant)."""
    os_name, architecture, variant = (platform.split("/") + [""])[:3]
    layer_id = hashlib.sha256(layer).hexdigest()
    config = json.dumps(
        {
            "architecture": architecture,
            "variant": variant,
            "os": os_name,
            "created": "1970-01-01T00:00:00Z",
            "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Cmd": ["/usr/bin/python3"]},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_id}"]},
        },
        sort_keys=True,
    ).encode()
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [tag], "Layers": [f"{layer_id}/layer.tar"]}]).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in ((config_name, config), (f"{layer_id}/layer.tar", layer), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def copy_new_files_out(container: Container, output: str, rootfs: Path) -> None:
    """Bring back the regular files and directories the step added under `output`; what was already
    in the tree is left as it is."""
    stream, _ = container.get_archive(output)
    with tempfile.TemporaryFile() as spool:
        for chunk in stream:
            spool.write(chunk)
        spool.seek(0)
        parent = rootfs / PurePosixPath(output).parent.relative_to("/")
        inside = rootfs.resolve()
        with tarfile.open(fileobj=spool, mode="r:") as tar:
            for member in tar:
                target = parent / member.name
                if (
                    ".." in PurePosixPath(member.name).parts
                    or member.name.startswith("/")
                    or not target.parent.resolve().is_relative_to(inside)
                ):
                    raise UserError(f"the ARM container returned an unsafe path {member.name!r}")
                if target.exists() or target.is_symlink():
                    continue
                if member.isdir():
                    target.mkdir(mode=0o755)
                elif member.isreg() and (src := tar.extractfile(member)) is not None:
                    with src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    os.chmod(target, member.mode & 0o755)
