"""The run archive of `buildkit smoke --system`: an Alpine service enabled in the overlay's runlevels
that no package here provides is left out, for OpenRC to skip, unless another service needs it:
then it gets a stub, as OpenRC refuses to start a service whose need is missing."""

from __future__ import annotations

import shlex
from pathlib import Path

from buildkit.smoke.system.initramfs import USERLAND, cpio_newc, read_cpio, run_archive

APP = "#!/sbin/openrc-run\ndepend() {\n\tneed net ntpd\n\tafter devfs modloop\n}\nstart() { :; }\n"


def overlay(root: Path) -> Path:
    (root / "etc/init.d").mkdir(parents=True)
    (root / "etc/init.d/app").write_text(APP)
    for runlevel, name in (("sysinit", "devfs"), ("default", "ntpd"), ("default", "app"), ("boot", "nftables")):
        (root / "etc/runlevels" / runlevel).mkdir(parents=True, exist_ok=True)
        (root / "etc/runlevels" / runlevel / name).symlink_to(f"/etc/init.d/{name}")
    return root


def test_an_absent_service_is_skipped_unless_another_one_needs_it(tmp_path):
    base = tmp_path / "base.cpio"
    base.write_bytes(cpio_newc([]))
    archive = run_archive({}, b"", {}, overlay(tmp_path / "overlay"), base)
    files = {entry.path: entry.data for entry in read_cpio(archive)}
    conf = dict(
        line.split("=", 1) for line in files[f"{USERLAND}/etc/bk-smoke/smoke.conf"].decode().splitlines() if line
    )
    assert shlex.split(conf["BK_STUBBED"]) == ["default/ntpd"]
    assert shlex.split(conf["BK_SKIPPED"]) == ["sysinit/devfs"]  # nftables is a bridge, app the overlay's
    assert files[f"{USERLAND}/etc/init.d/ntpd"].startswith(b"#!/sbin/openrc-run")
    assert f"{USERLAND}/etc/init.d/devfs" not in files
