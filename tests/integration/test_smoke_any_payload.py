"""`buildkit smoke` on a payload that is not one of the reference services (tests/integration/data/
inventory: /status and /v1/items on port 9090, its own user and secret): the platform checks hold
for it, the checks its [smoke] table declares run, a recipe with no [smoke] table gets the platform
checks alone, and a declared probe that does not hold fails the run and is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from buildkit.smoke import PLATFORM_CHECKS
from support.go import session_cache
from support.smoke import (
    INVENTORY,
    assert_every_check_passed,
    check_lines,
    detail_lines,
    leftovers,
    package_with_test_key,
    recipe_copy,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def go_cache(hello_go_build) -> Path:
    """The session's buildkit cache: Go's own build cache is warm there."""
    return session_cache(hello_go_build)


@pytest.fixture
def smoke_recipe(buildkit_cli, run_cli, go_cache, tmp_path):
    """Package a recipe with a throwaway key, smoke-test it, and check that nothing is left behind."""

    def run(recipe: Path):
        out = package_with_test_key(buildkit_cli, recipe, tmp_path, BUILDKIT_CACHE=str(go_cache))
        result = run_cli("smoke", out, timeout=300)
        assert leftovers() == []
        return result

    return run


def test_a_service_of_its_own_passes_the_platform_and_its_declared_checks(smoke_recipe):
    result = smoke_recipe(INVENTORY)

    assert result.returncode == 0, result.stdout + result.stderr
    assert_every_check_passed(result.stdout, INVENTORY)
    details = detail_lines(result.stdout)
    assert "uid 20002 inside" in details["sandbox"] and "(declared: none)" in details["sandbox"]
    assert "redirected to the payload's port 9090" in details["port-80"]
    assert ":9090 directly: " in details["direct-port-closed"]
    assert "GET /v1/items → 200" in details["http:items"] and "widget" in details["http:items"]
    assert "POST /v1/items?name=gadget → 401" in details["http:add-without-token"]
    assert "with the api_token token → 201" in details["http:add-with-token"]


def test_a_recipe_without_a_smoke_table_gets_the_platform_checks_and_a_tcp_connect(smoke_recipe, tmp_path):
    result = smoke_recipe(recipe_copy(INVENTORY, tmp_path / "plain"))

    assert result.returncode == 0, result.stdout + result.stderr
    assert check_lines(result.stdout) == {name: "PASS" for name in PLATFORM_CHECKS}
    assert list(check_lines(result.stdout)) == list(PLATFORM_CHECKS)
    assert "10.231.0.1:80 accepts a TCP connection" in detail_lines(result.stdout)["port-80"]


def test_a_probe_expecting_another_status_fails_with_exit_1_and_is_named(smoke_recipe, tmp_path):
    teapot = '[[smoke.http]]\nname = "teapot"\npath = "/status"\nstatus = 418\n'
    result = smoke_recipe(recipe_copy(INVENTORY, tmp_path / "wrong", teapot))

    assert result.returncode == 1, result.stdout + result.stderr
    checks = check_lines(result.stdout)
    assert checks.pop("http:teapot") == "FAIL"
    assert "GET /status answered 200, expected 418" in detail_lines(result.stdout)["http:teapot"]
    assert checks == {name: "PASS" for name in PLATFORM_CHECKS}, "the platform checks still ran, and held"
    assert f"{len(PLATFORM_CHECKS)}/{len(PLATFORM_CHECKS) + 1} checks passed; failed: http:teapot" in result.stdout
