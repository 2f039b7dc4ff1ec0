#!/usr/bin/env bash
# Fills .whl/ at the repository root with the wheels the GPU acceptance machine lacks:
#   bash scripts/gpu_wheels.sh          (from anywhere; idempotent: it rebuilds .whl/ from scratch)
# That machine is air-gapped (Python 3.12, x86-64 manylinux, its own torch 2.11 + cu130, no package
# registry) and installs what .whl/ holds with
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
# so .whl/ must hold every missing package, dependencies included, in cp312/manylinux or pure-python
# form: deepspeed (a py3-none-any wheel built here from PyPI's sdist, ops JIT-compiled at run time)
# + hjson + pydantic(-core), annotated-types, typing-inspection; omegaconf (antlr is vendored in
# 2.4); open-clip-torch + ftfy, wcwidth; mosaicml-streaming + what `import streaming` and reading
# local MDS shards need (catalogue, brotli, python-snappy + cramjam, zstd; its cloud SDKs, boto3,
# google-cloud-storage, azure, oci, paramiko, are imported lazily and stay behind); PyAV; and
# longvivit itself. Everything that machine already has (torch, numpy, transformers, xxhash, ...)
# stays out. The total must stay within 64 MiB: the script prints it and fails above that.
# Needs PyPI and a Python with pip (the repo's .venv when present; PYTHON=... overrides).
#   WITH_AV=0 bash scripts/gpu_wheels.sh    leaves PyAV (~34 MiB) out.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
OUT=.whl
LIMIT_MIB=64
WITH_AV=${WITH_AV:-1}

# Pins: the versions requirements.txt gives .venv, and the versions .venv resolved for their
# dependencies, so the GPU run exercises what CPU CI tests.
DEEPSPEED=deepspeed==0.19.8
DOWNLOAD=(
    # deepspeed's own dependencies that the GPU machine lacks (it has einops, msgpack, ninja,
    # numpy, packaging, psutil, py-cpuinfo, torch, tqdm). pydantic 2.14 needs typing_extensions
    # >= 4.14 at run time (its Sentinel), which the GPU machine's torch-2.11-era install has.
    hjson==3.1.0
    pydantic==2.14.4
    pydantic-core==2.50.5
    annotated-types==0.8.0
    typing-inspection==0.4.5
    omegaconf==2.4.0
    open-clip-torch==3.3.0
    ftfy==6.3.1
    wcwidth==0.9.4
    mosaicml-streaming==0.13.0
    catalogue==2.0.10
    brotli==1.2.1
    python-snappy==0.7.3
    cramjam==2.14.0
    zstd==1.5.7.2
)
if [ "$WITH_AV" != 0 ]; then DOWNLOAD+=(av==18.1.0); fi

STAGE=$(mktemp -d "${TMPDIR:-/tmp}/gpu_wheels.XXXXXX")
trap 'rm -rf "$STAGE"' EXIT
rm -rf "$OUT"   # stale wheels never travel: .whl/ only reappears once the whole set checks out
mkdir -p "$STAGE/whl"

echo "== downloading ${#DOWNLOAD[@]} wheels for cp312 manylinux x86-64"
PLATFORMS=()
for n in $(seq 28 -1 5); do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${PLATFORMS[@]}" -d "$STAGE/whl" "${DOWNLOAD[@]}"

echo "== building $DEEPSPEED (pure python; ops are JIT-built where they are used)"
# Isolated build env without torch, as pip builds it for .venv: the wheel then records no build-time
# torch/CUDA version and installed_ops all False, so every op goes the JIT path on the GPU machine.
DS_BUILD_OPS=0 "$PYTHON" -m pip wheel --quiet --no-cache-dir --no-deps --no-binary deepspeed \
    -w "$STAGE/whl" "$DEEPSPEED"

echo "== building longvivit from this working tree"
# From a copy, so that the build leaves no build/ or *.egg-info in the repository.
mkdir -p "$STAGE/src"
cp pyproject.toml README.md "$STAGE/src/"
for d in longvivit model data train ds_configs; do  # pyproject's package dirs
    cp -r "$d" "$STAGE/src/"
done
find "$STAGE/src" -name __pycache__ -prune -exec rm -rf {} +
if ! "$PYTHON" -m pip wheel --quiet --no-deps --no-build-isolation -w "$STAGE/whl" "$STAGE/src" 2>/dev/null; then
    # This Python lacks setuptools>=77: let pip fetch it into an isolated build env.
    "$PYTHON" -m pip wheel --quiet --no-deps -w "$STAGE/whl" "$STAGE/src"
fi

echo "== checking"
"$PYTHON" - "$STAGE/whl" "$LIMIT_MIB" <<'EOF'
import re
import sys
import zipfile
from pathlib import Path

folder, limit_mib = Path(sys.argv[1]), int(sys.argv[2])
wheels = sorted(folder.glob("*.whl"))
bad, names = [], {}
for w in wheels:
    name, _version, *_build, py, abi, plat = w.name[:-4].split("-")
    names.setdefault(name.lower().replace("_", "-"), []).append(w.name)
    pure = plat == "any" and abi == "none" and py.startswith("py")
    cp312 = (py == "cp312" and abi == "cp312") or (abi == "abi3" and py in {f"cp3{i}" for i in range(2, 13)})
    linux = all(re.fullmatch(r"manylinux(1|2010|2014|_2_\d+)_x86_64", p) for p in plat.split("."))
    if not (pure or (cp312 and linux)):
        bad.append(f"{w.name}: not py3-none-any nor cp312/abi3 manylinux x86_64")
    if pure:
        with zipfile.ZipFile(w) as z:
            native = [n for n in z.namelist() if n.endswith((".so", ".pyd", ".dll"))]
        if native:
            bad.append(f"{w.name}: tagged pure python but ships {native[:3]}")
for name, files in names.items():
    if len(files) > 1:
        bad.append(f"{name}: more than one version ({files})")
total = sum(w.stat().st_size for w in wheels)
width = max(len(w.name) for w in wheels)
for w in wheels:
    print(f"  {w.name:<{width}}  {w.stat().st_size / 2**20:7.2f} MiB")
print(f"  {len(wheels)} wheels, total {total / 2**20:.2f} MiB ({total} bytes) of {limit_mib} MiB allowed")
if total > limit_mib * 2**20:
    bad.append(f"total {total / 2**20:.2f} MiB is over the {limit_mib} MiB limit "
               "(WITH_AV=0 leaves PyAV out)")
if bad:
    print("gpu_wheels.sh: FAILED:\n  " + "\n  ".join(bad), file=sys.stderr)
    sys.exit(1)
EOF

mv "$STAGE/whl" "$ROOT/$OUT"
echo "== wrote $OUT/ ($(ls "$ROOT/$OUT" | wc -l) wheels)"
