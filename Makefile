# lfmc: every target sets up .venv itself (no other step), installing exact pins.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-all fuzz venv clean system-deps

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

test: $(STAMP) system-deps
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-all: $(STAMP) system-deps
	$(BIN)/python -m pytest -q -m '' $(PYTEST_ARGS)

# The fuzz suite twenty times as long as in `make test` (hypothesis examples, atheris runs, random models).
fuzz: $(STAMP)
	LFMC_FUZZ_SCALE=20 $(BIN)/python -m pytest -q -m '' tests/fuzz $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
