"""`buildkit init NAME --kind go|python`: what it writes is packaged at once with the project's
development key (which stays out of the payload) and passes every smoke check, as root."""

from __future__ import annotations

import pytest

from buildkit.recipe import load_recipe
from support.smoke import assert_every_check_passed

pytestmark = pytest.mark.slow


def test_the_new_recipe_packages_and_the_key_stays_out_of_the_payload(initialised):
    payload = initialised.out / "payload"
    assert "signing with key" in initialised.package_stderr
    assert (initialised.recipe_dir / ".buildkit" / "dev-key").is_dir(), "the project's development key"
    assert not [p for p in payload.rglob("*") if ".buildkit" in p.parts], "the dev key was copied into the payload"
    entrypoint = load_recipe(initialised.recipe_dir).run.entrypoint
    assert (payload / entrypoint.lstrip("/")).is_file()


@pytest.mark.root
def test_the_new_recipe_passes_every_smoke_check(initialised, run_cli):
    result = run_cli("smoke", initialised.out, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert_every_check_passed(result.stdout, initialised.recipe_dir)
    assert "log-window" in result.stdout and "http:health" in result.stdout
