# make demo   set up .venv (first time) and run the demo
# make test   run the default test suite
# make test-all  also the slow tests
# make bench  regenerate bench/RESULTS.md (hours on a 2-core CPU; see bench/run_all.sh)
.PHONY: setup demo test test-all bench clean

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
