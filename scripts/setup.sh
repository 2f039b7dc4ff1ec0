#!/usr/bin/env bash
# Creates .venv at the repository root with every dependency and installs longvivit into it.
#   bash scripts/setup.sh        (what `make setup` runs; idempotent)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/pip install --quiet --upgrade "pip>=24" "setuptools>=77" wheel
.venv/bin/pip install --quiet -r requirements.txt
.venv/bin/pip install --quiet --no-deps --no-build-isolation -e .
.venv/bin/python -c "import longvivit.model, longvivit.data, longvivit.train, deepspeed, streaming, nvidia.dali" \
    2>&1 | grep -v -i warn || true
touch .venv/.ready
