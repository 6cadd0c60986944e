# lfmc: every target sets up .venv itself (no other step), installing exact pins.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-all test-arm arm-env arm-env-best-effort fuzz venv clean system-deps

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[compiler,test,opencl,plot,mlir,serve,vision]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m lfmc.demo

# Debian packages for the device paths that run or are checked here: PoCL (OpenCL on the CPU), lld-22 and the
# ROCm device libraries (AMD code objects), the aarch64 cross compiler (arm64 libraries). Best effort: without
# root or apt the tests that need them skip and say what is missing.
SYSTEM_PKGS := pocl-opencl-icd ocl-icd-libopencl1 lld-22 rocm-device-libs g++-aarch64-linux-gnu
system-deps:
	@missing=$$(for p in $(SYSTEM_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $$missing"; (apt-get update -qq || true); \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null || echo "apt-get failed: some device tests will skip"; \
	  else echo "not installed (device tests that need them will skip): $$missing"; fi; fi

# Arm artifacts executed under qemu-aarch64: Debian's qemu-user, an arm64 Debian root with its python3 and the
# runtime's aarch64 wheels, all in build/ (tests/targets/arm/setup.sh). Best effort for `make test` (the Arm smoke
# test skips and says why without it); `make test-arm` needs it and runs the whole Arm matrix.
arm-env: $(STAMP)
	sh tests/targets/arm/setup.sh

arm-env-best-effort: $(STAMP)
	@sh tests/targets/arm/setup.sh || echo "arm-env failed: the Arm execution tests will skip"

test: $(STAMP) system-deps arm-env-best-effort
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-all: $(STAMP) system-deps arm-env-best-effort
	$(BIN)/python -m pytest -q -m '' $(PYTEST_ARGS)

test-arm: arm-env
	$(BIN)/python -m pytest -q -m '' tests/targets/arm $(PYTEST_ARGS)

# The fuzz suite twenty times as long as in `make test` (hypothesis examples, atheris runs, random models).
fuzz: $(STAMP)
	LFMC_FUZZ_SCALE=20 $(BIN)/python -m pytest -q -m '' tests/fuzz $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
