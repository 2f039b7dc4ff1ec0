#!/usr/bin/env bash
# Regenerates every number in bench/RESULTS.md:   bash bench/run_all.sh   (or: make bench)
#
# On a 2-core CPU machine this takes about 1.5-2 hours (most of it the ViT-B cells of
# masking.py and the eight tiny training runs of tradeoff.py); with a GPU the same scripts
# report against the device. Each benchmark prints one JSON object, kept in
# bench/results/; bench/report.py renders them into RESULTS.md (between its markers).
# decode.py appends its own dated section (the data engineer's).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
mkdir -p bench/results

$PY bench/decode.py --record bench/RESULTS.md
$PY bench/plan_verdicts.py --configs g_1b long_L256 --gpus 8 --gpu-mem 80GiB > bench/results/plan.json
rm -f bench/results/masking*.json
$PY bench/masking.py --dims B --frames 16 64 > bench/results/masking_B.json   # ViT-B at 256 frames: minutes per step here; add 256 to time its masked cells
$PY bench/masking.py --dims tiny > bench/results/masking_tiny.json
$PY bench/mfu.py > bench/results/mfu.json
$PY bench/peers.py --frames 16 > bench/results/peers.json   # add 64 for 64-frame 75%-masked cells (+10 min)
$PY bench/tradeoff.py > bench/results/tradeoff.json
$PY bench/report.py
