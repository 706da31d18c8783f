"""`buildkit smoke` on the Python reference service: an ARMv5TE/armel mini root filesystem whose
interpreter runs as an ARM1176 in the same sandbox, behind the same firewall, as hello-go."""

from __future__ import annotations

import pytest

from support.pyrootfs import EPOCH, HELLO_PY, session_cache
from support.smoke import assert_every_check_passed, detail_lines, leftovers, package_with_test_key

pytestmark = [pytest.mark.root, pytest.mark.slow]


def test_hello_py_passes_every_check(tmp_path_factory, buildkit_cli, run_cli, hello_py_build):
    # hello_py_build: the session's rootfs build; packaging below reuses its cache
    out = package_with_test_key(
        buildkit_cli,
        HELLO_PY,
        tmp_path_factory.mktemp("smoke-hello-py"),
        BUILDKIT_CACHE=str(session_cache(tmp_path_factory)),
        SOURCE_DATE_EPOCH=EPOCH,
    )

    result = run_cli("smoke", out, timeout=600)

    assert result.returncode == 0, result.stdout + result.stderr
    assert_every_check_passed(result.stdout, HELLO_PY)
    assert "python3" in detail_lines(result.stdout)["target-cpu"]
    assert "0 zombies" in detail_lines(result.stdout)["no-zombies"]
    assert leftovers() == []
