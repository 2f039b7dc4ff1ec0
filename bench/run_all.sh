#!/usr/bin/env bash
# Regenerates every number in bench/RESULTS.md:   bash bench/run_all.sh   (or: make bench)
#
# On a 2-core CPU machine this takes about 2-2.5 hours (most of it the ViT-B cells of
# masking.py and the eight tiny training runs of tradeoff.py); with a GPU the same scripts
# report against the device. Each benchmark prints one JSON object, kept in
# bench/results/; bench/report.py renders them into RESULTS.md (the whole file).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
mkdir -p bench/results runs

$PY bench/decode.py > bench/results/decode.json   # ~10 min: CPU decoding, seeking, loader vs step
$PY bench/plan_verdicts.py --configs g_1b long_L256 --gpus 8 --gpu-mem 80GiB > bench/results/plan.json
rm -f bench/results/masking*.json
$PY bench/masking.py --dims B --frames 16 64 > bench/results/masking_B.json
$PY bench/masking.py --dims B --frames 256 > bench/results/masking_B256.json   # 75% and 90% timed (~12 min); 0 and 50% bytes only
$PY bench/masking.py --dims tiny > bench/results/masking_tiny.json
$PY bench/mfu.py > bench/results/mfu.json
$PY bench/peers.py --frames 16 64 --rounds 9 > bench/results/peers.json   # ~25 min: the models differ by less than one step's noise
$PY bench/peers.py --frames 16 --ratios 0 --rounds 1 --profile > bench/results/peers_profile.json   # where a step's time goes
$PY bench/tradeoff.py > bench/results/tradeoff.json
$PY bench/tradeoff.py --runs a b --seeds 0 1 2 > bench/results/tradeoff_seeds.json   # (a) vs (b) over seeds, ~13 min
$PY bench/demo_seeds.py --tune > bench/results/demo_seeds.json   # ~25 min: `longvivit demo --long-range --tune` on 3 seeds, stage 2 vs stage 1 (and stage 3)
$PY bench/mc_probe.py --synth runs/demo-seeds/seed-0/synth --run stage1=runs/demo-seeds/seed-0/short \
    --run stage2=runs/demo-seeds/seed-0/long --linear > bench/results/mc_probe.json   # ~6 min: seed 0's stages, caption vs flipped/swapped caption, linear probes
for s in 1 2; do   # ~3 min each: the other seeds' stages, without the linear probes
    $PY bench/mc_probe.py --synth runs/demo-seeds/seed-$s/synth --run stage1=runs/demo-seeds/seed-$s/short \
        --run stage2=runs/demo-seeds/seed-$s/long > bench/results/mc_probe_seed$s.json
done
.venv/bin/longvivit demo --out runs/demo-probe > runs/demo-probe.log   # ~4-7 min: the default benchmark's two stages, for the same probes
$PY bench/mc_probe.py --synth runs/demo-probe/synth --run stage1=runs/demo-probe/short --run stage2=runs/demo-probe/long \
    --linear > bench/results/mc_probe_default.json   # ~4 min
$PY bench/claims.py > bench/results/claims.json   # ~48 min (load 4-6): the paper's three claims, 3 seeds, a verdict each
$PY bench/claims.py --claims c --steps 300 > bench/results/claims_c300.json   # ~17 min: (c) with twice the steps
$PY bench/padding.py --rounds 7 --real 64 16 > bench/results/padding_mixed.json   # padded clips: dropped vs encoded
$PY bench/padding.py --rounds 7 --real 16 > bench/results/padding_short.json
$PY bench/sequence.py --rounds 7 > bench/results/sequence.json   # ~3 min: a clip over 2 ranks (Ulysses) vs one, and the plans at N = 1 and 8
$PY bench/hour.py > bench/results/hour.json   # ~2 min: an hour at 1 FPS, the tiny step on CPU and the plans for g and L
$PY bench/offload.py > bench/results/offload.json   # ~5 min: ZeRO-3 offload, torch AdamW vs DeepSpeedCPUAdam (incl. its cold JIT build)
$PY bench/compile.py > bench/results/compile.json   # ~6 min: compiled blocks vs eager under ZeRO-3 + checkpointing, tiny and B
$PY bench/zero_init.py --preset B --check > bench/results/zero_init_B.json   # ~1 min: building under ZeRO-3, whole vs deepspeed.zero.Init, weights compared
$PY bench/zero_init.py --preset B --mmap-threshold 0 > bench/results/zero_init_B_glibc.json   # the same with glibc's default malloc
$PY bench/zero_init.py --preset g > bench/results/zero_init_g.json   # ~3 min, ~10 GB of RAM: the ~1B preset both ways
$PY bench/embed.py > bench/results/embed.json   # ~1.5 min: longvivit embed's videos/s from raw files and shards
$PY bench/search.py > bench/results/search.json   # ~4 min, ~4 GB: exact search against faiss, 1e3 to 1e6 rows
$PY bench/report.py
