# emlive — the two commands a newcomer needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.emlive-installed
DEMO_DIR ?= demo_out

.PHONY: demo demo-offline test lint typecheck install wheel-smoke bench clean browser xvfb gpu-check

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned to the CPU build, so no dependency resolves a CUDA build
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[train,dm,dev,bench,cluster,zarr,preview,napari,bioimageio]"
	touch $(STAMP)

install: $(STAMP)

DEMO_SOURCE ?= synthetic

# The live demo: detector simulator -> denoising service -> browser viewer (Ctrl-C stops all three).
demo: $(STAMP)
	$(BIN)/emlive demo --source $(DEMO_SOURCE)

# The offline job: simulate, train synthetic-small (about 15 min on 2 cores), denoise, score.
demo-offline: $(STAMP)
	$(BIN)/emlive demo-offline --out $(DEMO_DIR)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

# mypy cannot follow the editable install's import hook: point it at the tree through a link named emlive
typecheck: $(STAMP)
	mkdir -p build/typecheck && ln -sfn $(CURDIR) build/typecheck/emlive
	MYPYPATH=build/typecheck $(BIN)/mypy -p emlive

# Chromium from Debian for the viewer's browser tests (tests/viewer); Playwright drives it, never `playwright install`.
# A failure here is tolerated: the browser tests then skip with the reason.
browser:
	@test -x /usr/bin/chromium || (apt-get update && apt-get install -y --no-install-recommends chromium) \
		|| echo "chromium could not be installed: the viewer's browser tests will be skipped"

# Xvfb from Debian for the napari plugin's widget tests (tests/napari_plugin; pytest-xvfb starts it for the session),
# with the X11 libraries PyQt5's xcb platform plugin loads (without them Qt aborts the process instead of skipping).
# A failure here is tolerated: the napari tests then skip with the reason.
XVFB_PACKAGES := xvfb libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-image0 libxcb-render-util0 libxkbcommon-x11-0
xvfb:
	@(command -v Xvfb >/dev/null && dpkg -s $(XVFB_PACKAGES) >/dev/null 2>&1) \
		|| (apt-get update && apt-get install -y --no-install-recommends $(XVFB_PACKAGES)) \
		|| echo "Xvfb could not be installed: the napari plugin's widget tests will be skipped"

test: lint typecheck browser xvfb
	$(BIN)/python -m pytest -q --durations=25

wheel-smoke: $(STAMP)
	$(BIN)/python -m pytest -q tests/test_packaging.py

bench: $(STAMP)
	$(BIN)/emlive bench

# The GPU check (bench/gpu_check.py): fp16, channels-last, torch.compile, CUDA graphs, the service and the GPU tests
# in under 8 minutes, one JSON in bench_out/gpu_check. Installs nothing: it needs the venv with a CUDA build of torch
# (README, "GPU installation"); without CUDA it writes {"cuda": false, "reason": ...} and stops.
GPU_CHECK_ARGS ?=
gpu-check:
	@test -x $(BIN)/python || { echo "no $(VENV): install a CUDA build of torch and emlive first (README: GPU installation)"; exit 1; }
	$(BIN)/python -m emlive.bench.gpu_check $(GPU_CHECK_ARGS)

clean:
	rm -rf build dist *.egg-info $(DEMO_DIR) bench_out .pytest_cache .ruff_cache .mypy_cache
