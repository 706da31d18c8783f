"""Fixtures of the integration tier: real compilers, Go, qemu, busybox, squashfs-tools, dockerd.
Each builds its artifact once per session (several modules share it) and fails with the fix when
a tool is missing."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from buildkit.build.stage import BuildResult
from support.docker_engine import Engine, running_dockerd
from support.gate import build_c_binaries, build_go_binaries
from support.go import build_hello_go
from support.go import session_cache as go_session_cache
from support.package import Demo, Device, package_demo
from support.postgres import running_postgres
from support.pyrootfs import HELLO_PY, build_in, session_cache
from support.scaffold import Initialised, init_and_package


@pytest.fixture(scope="session")
def gate_c_binaries(tmp_path_factory) -> dict[str, Path]:
    """Every C variant of support.gate.C_VARIANTS plus an aarch64 freestanding program."""
    return build_c_binaries(tmp_path_factory.mktemp("gate-c"))


@pytest.fixture(scope="session")
def gate_go_binaries(tmp_path_factory) -> dict[str, Path]:
    """support.gate.GO_PROGRAM for GOARM=5/6/7 and arm64."""
    return build_go_binaries(tmp_path_factory.mktemp("gate-go"))


@pytest.fixture(scope="session")
def hello_go_build(tmp_path_factory) -> BuildResult:
    """recipes/hello-go built from the repository, with its own cache (see support.go.session_cache)."""
    return build_hello_go(tmp_path_factory.mktemp("hello-go-session"))


@pytest.fixture(scope="session")
def hello_py_build(tmp_path_factory) -> BuildResult:
    """recipes/hello-py built with the native backend, in the session's Python cache."""
    return build_in(HELLO_PY, tmp_path_factory.mktemp("hello-py-native"), session_cache(tmp_path_factory))


@pytest.fixture(scope="session", params=["go", "python"])
def initialised(request, tmp_path_factory, buildkit_cli, hello_go_build) -> Initialised:
    """`buildkit init` of each kind, packaged with the development key; the session's caches (the Go
    one warmed by hello-go, the Python one holding the downloaded .debs)."""
    python = request.param == "python"
    cache = session_cache(tmp_path_factory) if python else go_session_cache(hello_go_build)
    return init_and_package(buildkit_cli, request.param, tmp_path_factory.mktemp(f"init-{request.param}"), cache)


@pytest.fixture(scope="session")
def packaged_demo(tmp_path_factory) -> Demo:
    """The demo recipe, a busybox payload and a throwaway key, packaged with the default epoch."""
    return package_demo(
        tmp_path_factory.mktemp("recipe"),
        tmp_path_factory.mktemp("payload"),
        tmp_path_factory.mktemp("key"),
        tmp_path_factory.mktemp("out"),
    )


@pytest.fixture
def device(packaged_demo) -> Iterator[Device]:
    """A scratch device root with the demo package laid out, cleaned up after the test."""
    with Device(packaged_demo.package) as dev:
        yield dev


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL 15 server for the session (support.postgres): its postgresql:// URL. A test
    that needs an empty database of its own takes support.postgres.fresh_database(postgres_url)."""
    with running_postgres() as server:
        yield server.url


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Engine]:
    if os.geteuid() != 0:
        pytest.skip("dockerd needs root")
    with running_dockerd() as engine:
        yield engine
