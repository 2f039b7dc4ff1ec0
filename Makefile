# make demo   set up .venv (first time) and run the demo
# make test   run the default test suite
# make test-all  also the slow tests
# make bench  regenerate bench/RESULTS.md (hours on a 2-core CPU; see bench/run_all.sh)
# make gpu-check  the GPU acceptance suite (tests/gpu) on this machine's CUDA device, JSON into
#             $(GPU_OUT); needs no `setup` (.venv's python if there is one, else python3, e.g. a
#             GPU machine with wheels in PYTHONPATH); without CUDA it says it skipped, exit 0
.PHONY: setup demo test test-all bench clean gpu-check

setup: .venv/.ready

.venv/.ready: requirements.txt pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

demo: setup
	.venv/bin/longvivit demo

test: setup
	.venv/bin/python -m pytest -q

test-all: setup
	.venv/bin/python -m pytest -q -m "slow or not slow"

bench: setup
	bash bench/run_all.sh

# The measurements run once, inside pytest (each tests/gpu module's fixture writes its JSON).
# Where pytest is missing, bench/gpu.py still measures and writes the JSON, asserting nothing.
GPU_OUT ?= bench/results/gpu
# GPU tests that live beside the CPU tests of their module (marked gpu, skipped without CUDA)
GPU_ELSEWHERE := tests/test_data_decode.py::test_on_cuda_each_clip_decodes_where_it_can
GPU_PY := $(if $(wildcard .venv/bin/python),.venv/bin/python,python3)

gpu-check:
	@if $(GPU_PY) -c "import pytest" 2>/dev/null; then \
		GPU_OUT=$(abspath $(GPU_OUT)) $(GPU_PY) -m pytest -q tests/gpu $(GPU_ELSEWHERE); \
	else \
		echo "gpu-check: pytest is not importable: measuring only (no assertions) with bench/gpu.py"; \
		$(GPU_PY) bench/gpu.py --out $(GPU_OUT); \
	fi
