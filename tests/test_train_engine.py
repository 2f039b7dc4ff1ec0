"""The DeepSpeed engine as the trainer builds it (longvivit/train/engine.py), against plain PyTorch.

- grad_accum: k micro-batches per optimizer step give the weights of one plain-PyTorch step
  on the same k micro-batches with their losses averaged. That is the step the loss allows:
  each micro-batch is its own InfoNCE (its own negatives), so it is not one InfoNCE over
  the k * m samples.
- grad_accum_loss=whole_batch (longvivit/train/accumulate.py) through the ZeRO-3 engine: k
  micro-batches give the weights of one plain-PyTorch step on one InfoNCE over all k * m.
- bf16: DeepSpeed's bf16 engine (bf16 weights and activations, fp32 master weights) trains
  to losses close to the fp32 engine's from the same weights on the same batches.

Each case runs in a spawned process with a real process group (gloo, DeepSpeed's CPU
accelerator), so nothing DeepSpeed initialises leaks into the test process.
"""
import copy
import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from longvivit.distributed.collectives import free_port

pytestmark = pytest.mark.multiproc

DEMO = Path(__file__).resolve().parent.parent / "longvivit" / "configs" / "demo.yaml"
STEPS, ACCUM, MICRO = 3, 2, 4


def run_config(*overrides: str):
    from longvivit.train.config import load_run_config

    return load_run_config(DEMO, overrides=["model.video.frames=4", "model.video.mask_ratio=0.5",
                                            f"data.batch_size={MICRO}", f"steps={STEPS}",
                                            "optim.warmup_steps=1", "optim.lr=1e-3", *overrides])


def batches(cfg, n: int) -> list[tuple]:
    g = torch.Generator().manual_seed(1)
    v, t = cfg.model.video, cfg.model.text
    out = []
    for _ in range(n):
        video = torch.randint(0, 256, (MICRO, v.frames, v.image_size, v.image_size, 3), dtype=torch.uint8,
                              generator=g)
        ids = torch.randint(4, t.vocab_size, (MICRO, 12), generator=g)
        out.append((video, ids, torch.ones_like(ids, dtype=torch.bool)))
    return out


def masks(step: int, micro: int) -> torch.Generator:
    return torch.Generator().manual_seed(1000 * step + micro)


def engine_run(cfg, model, data) -> tuple[list[float], dict, list[float]]:
    """STEPS optimizer steps of grad_accum micro-batches each; (losses, gathered weights,
    gradient norms before clipping)."""
    import deepspeed

    from longvivit.train.config import resolve_ds_config
    from longvivit.train.engine import build_engine

    engine = build_engine(model, cfg, resolve_ds_config(cfg, 1))
    losses, norms = [], []
    for step in range(STEPS):
        if cfg.grad_accum_loss == "whole_batch":
            losses.append(whole_batch_engine_step(engine, data, step, cfg.grad_accum))
            norms.append(float(engine.get_global_grad_norm()))
            continue
        micro_losses = []
        for micro in range(cfg.grad_accum):
            video, ids, mask = data[step * cfg.grad_accum + micro]
            loss, _ = engine(video, ids, mask, generator=masks(step, micro))
            engine.backward(loss)
            engine.step()
            micro_losses.append(loss.item())
        losses.append(sum(micro_losses) / len(micro_losses))
        norms.append(float(engine.get_global_grad_norm()))
    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params):
        weights = {n: p.detach().float().clone() for n, p in engine.module.named_parameters()}
    return losses, weights, norms


def whole_batch_engine_step(engine, data, step: int, k: int) -> float:
    """The trainer's whole_batch step (run.whole_batch_train_step's bindings)."""
    from longvivit.train.accumulate import whole_batch_step

    batches = [dict(zip(("video", "text_ids", "text_mask"), data[step * k + m])) for m in range(k)]
    embed = lambda b, g: engine.module.embed(b["video"], b["text_ids"], b["text_mask"], generator=g)  # noqa: E731
    forward = lambda b, g, n: engine(b["video"], b["text_ids"], b["text_mask"], generator=g, negatives=n)  # noqa: E731
    loss, _ = whole_batch_step(batches, [lambda m=m: masks(step, m) for m in range(k)], embed, forward,
                               lambda loss: engine.backward(loss, scale_wrt_gas=False), engine.step)
    return loss.item()


def one_loss(model, data, step: int, k: int) -> torch.Tensor:
    """One InfoNCE over the k micro-batches' samples, each embedded with its own masks."""
    pairs = [model.embed(*data[step * k + m], generator=masks(step, m)) for m in range(k)]
    scale = model.logit_scale.clamp(max=model.cfg.max_logit_scale).exp()
    return model.loss(torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs]), scale)[0]


def reference_run(cfg, model, data) -> tuple[list[float], dict, list[float]]:
    """The same steps in plain PyTorch: the micro-batch losses averaged, one backward
    (whole_batch: one loss over all the step's samples)."""
    from longvivit.train.engine import build_optimizer

    optimizer, schedule = build_optimizer(model, cfg)
    losses, norms = [], []
    for step in range(STEPS):
        optimizer.zero_grad()
        micro = [model(*data[step * cfg.grad_accum + m], generator=masks(step, m))[0]
                 for m in range(cfg.grad_accum)]
        loss = torch.stack(micro).mean()
        if cfg.grad_accum_loss == "whole_batch":
            loss = one_loss(model, data, step, cfg.grad_accum)
        loss.backward()
        norms.append(float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip)))
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return losses, {n: p.detach().clone() for n, p in model.named_parameters()}, norms


def _worker(rank: int, port: int, case: str, overrides: list, results) -> None:
    os.environ.update(DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    from longvivit.distributed import collectives as dist
    from longvivit.model import build_model

    d = dist.DistEnv(0, 1, 0, 1, "127.0.0.1", port)
    dist.setup_env(d)
    dist.bind_device(d)
    dist.init_process_group(timedelta(seconds=120))
    try:
        cfg = run_config(*overrides)
        torch.manual_seed(0)
        model = build_model(cfg.model)
        data = batches(cfg, STEPS * cfg.grad_accum)
        if case == "reference":
            results[case] = reference_run(cfg, model, data)
        else:
            results[case] = engine_run(cfg, copy.deepcopy(model), data)
    finally:
        dist.shutdown(d)


def run_case(case: str, *overrides: str):
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(free_port(), case, list(overrides), results), nprocs=1, join=True)
    return results[case]


def engine_equals_reference(*accum: str) -> tuple[list[float], dict]:
    """The ZeRO-3 engine and plain PyTorch on the same steps: losses, pre-clip gradient
    norms (the gradient's scale, which AdamW's step hardly shows) and weights agree.
    Returns the reference's (losses, weights)."""
    losses, weights, norms = run_case("engine", "ds_config=zero3_cpu.json", *accum)
    ref_losses, ref_weights, ref_norms = run_case("reference", *accum)
    assert torch.allclose(torch.tensor(losses), torch.tensor(ref_losses), atol=1e-5), (losses, ref_losses)
    assert torch.allclose(torch.tensor(norms), torch.tensor(ref_norms), rtol=1e-4), (norms, ref_norms)
    diffs = {n: (weights[n] - r).abs().max().item() for n, r in ref_weights.items()}
    assert max(diffs.values()) < 2e-5, sorted(diffs.items(), key=lambda kv: -kv[1])[:3]
    return ref_losses, ref_weights


def test_accumulated_micro_batches_equal_one_step_on_the_same_samples():
    accum = [f"grad_accum={ACCUM}", "optim.clip=0.5"]
    _, ref_weights = engine_equals_reference(*accum)
    # the steps did move the weights (the comparison is not between two untouched models)
    torch.manual_seed(0)
    from longvivit.model import build_model

    initial = build_model(run_config(*accum).model).state_dict()
    assert max((initial[n] - r).abs().max().item() for n, r in ref_weights.items()) > 1e-3


def test_whole_batch_accumulation_equals_one_step_on_one_loss_over_all_samples():
    ref_losses, _ = engine_equals_reference("grad_accum=3", "grad_accum_loss=whole_batch", "optim.clip=0.5")
    plain, _, _ = run_case("reference", "grad_accum=3", "optim.clip=0.5")
    assert abs(plain[0] - ref_losses[0]) > 1e-2  # 12 samples' negatives, not 4's: another loss


def test_bf16_engine_trains_close_to_fp32():
    fp32, _, _ = run_case("engine", "ds_config=zero3_cpu.json", "precision=fp32")
    bf16, _, _ = run_case("engine", "ds_config=zero3_cpu.json", "precision=bf16")
    diffs = [abs(a - b) for a, b in zip(fp32, bf16)]
    print({"fp32": fp32, "bf16": bf16, "diffs": diffs})
    assert diffs[0] < 0.02 and max(diffs) < 0.05, (fp32, bf16)


def test_optimizer_state_off_its_parameters_device_is_found_and_moved():
    """What a universal-checkpoint load can leave: a fused AdamW's step on another device
    (there the CPU, here the meta device, the only other one a CPU machine has) and in
    another dtype. place_optimizer_state moves it where torch's own load_state_dict puts it."""
    from longvivit.train.engine import misplaced_optimizer_state, place_optimizer_state

    p = torch.nn.Parameter(torch.randn(4))
    opt = torch.optim.AdamW([p], fused=True)
    p.grad = torch.randn(4)
    opt.step()
    assert misplaced_optimizer_state(opt) == []
    opt.state[p]["step"] = torch.tensor(1.0, dtype=torch.float64, device="meta")
    opt.state[p]["exp_avg"] = opt.state[p]["exp_avg"].to("meta")
    (wrong_avg, wrong_step) = sorted(misplaced_optimizer_state(opt))
    assert wrong_avg == "0.exp_avg: meta torch.float32, wants cpu torch.float32"
    assert wrong_step == "0.step: meta torch.float64, wants cpu torch.float32"
    opt.state[p]["step"] = torch.tensor(1.0, dtype=torch.float64)  # meta holds no value to move
    opt.state[p]["exp_avg"] = torch.zeros(4)
    placed = place_optimizer_state(opt)
    assert placed == {"tensors": 3, "moved": ["0.step"]} and misplaced_optimizer_state(opt) == []
    assert opt.state[p]["step"].dtype == torch.float32
    opt.step()  # the fused kernel takes it


def test_a_plain_optimizers_step_may_stay_on_the_cpu():
    from longvivit.train.engine import misplaced_optimizer_state

    p = torch.nn.Parameter(torch.randn(4, device="meta"))
    opt = torch.optim.AdamW([p], foreach=False)
    opt.state[p] = {"step": torch.tensor(2.0), "exp_avg": torch.zeros(4, device="meta")}
    assert misplaced_optimizer_state(opt) == []  # torch keeps a non-fused step on the CPU
