"""MFU benchmark: model FLOP/s of the whole training step against this machine's matmul peak.

    .venv/bin/python bench/mfu.py [--dims B tiny] [--frames 64] [--mask-ratio 0.75] \
        [--rounds 5] [--threads 1]

The step is what the trainer does per micro-batch, minus DeepSpeed: the DualEncoder
forward (video tower, text tower, InfoNCE loss), backward, and an AdamW step over the
trainer's parameter groups (fused kernel, see common.adamw). Model FLOPs come from
longvivit.model.flops_per_sample (matmuls and attention at the visible token count, x3 for
forward + backward; the optimizer, norms and activations count zero, as MFU defines it).

The peak is measured in the same process, on the same threads and dtype: an n x n fp32
matmul (bf16 on a GPU) timed once per round between the steps, and the best of those is
the peak. MFU = FLOPs / median step time / peak. On a GPU the script also reports the
device's spec-sheet bf16 peak (longvivit.train.metrics) next to the measured one.

dims: B = ViT-B/16 video tower at 224 px (64 frames at 75% masking: 1,568 visible tokens)
with its 512-wide text tower; tiny = the 32 px tiny preset.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from longvivit.model import build_model, flops_per_sample, model_config
from longvivit.train.engine import param_groups

import common

DIMS = {"B": ("B", 224, 1), "tiny": ("tiny", 32, 8)}  # preset, image size, micro-batch


def batch_for(cfg, batch: int, device: torch.device) -> tuple:
    v, L = cfg.video, cfg.text.context_length
    g = torch.Generator().manual_seed(0)
    video = torch.randint(0, 256, (batch, v.frames, v.image_size, v.image_size, 3), dtype=torch.uint8, generator=g)
    ids = torch.randint(1, cfg.text.vocab_size, (batch, L), generator=g)
    return video.to(device), ids.to(device), torch.ones(batch, L, dtype=torch.bool, device=device)


class TrainStep:
    """forward + backward + optimizer step; keeps the seconds of each phase."""

    def __init__(self, model, optimizer, inputs, device):
        self.model, self.optimizer, self.inputs, self.device = model, optimizer, inputs, device
        self.phases: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": []}

    def __call__(self) -> None:
        t = [time.perf_counter()]
        self.optimizer.zero_grad(set_to_none=True)
        loss, _ = self.model(*self.inputs)
        t.append(self._now())
        loss.backward()
        t.append(self._now())
        self.optimizer.step()
        t.append(self._now())
        for name, a, b in zip(self.phases, t, t[1:]):
            self.phases[name].append(b - a)

    def _now(self) -> float:
        common.sync(self.device)
        return time.perf_counter()


def run_dims(name: str, frames: int, ratio: float, rounds: int, device: torch.device,
             dtype: torch.dtype, matmul_n: int) -> dict:
    preset, size, batch = DIMS[name]
    cfg = model_config(preset, [f"video.frames={frames}", f"video.image_size={size}",
                                f"video.mask_ratio={ratio}"])
    torch.manual_seed(0)
    model = build_model(cfg).to(device=device, dtype=dtype).train()
    optimizer = common.adamw(param_groups(model, weight_decay=0.1))  # the trainer's groups
    step = TrainStep(model, optimizer, batch_for(cfg, batch, device), device)
    step()  # untimed: allocates AdamW's state
    step.phases = {k: [] for k in step.phases}
    a = torch.randn(matmul_n, matmul_n, device=device, dtype=dtype)
    b = torch.randn(matmul_n, matmul_n, device=device, dtype=dtype)
    samples = common.interleaved({"step": step, "matmul": lambda: a @ b}, rounds, device=device)
    flops = flops_per_sample(cfg, ratio) * batch
    step_s = common.median(samples["step"])
    peak = 2 * matmul_n**3 / min(samples["matmul"])
    return {"dims": name, "frames": frames, "image_size": size, "mask_ratio": ratio, "batch": batch,
            "params": model.num_params(), "model_flops_per_step": flops,
            "step_s": round(step_s, 4), "step_s_samples": [round(s, 4) for s in samples["step"]],
            "phases_s": {k: round(common.median(v), 4) for k, v in step.phases.items()},
            "achieved_flops_per_s": flops / step_s, "matmul_peak_flops_per_s": peak,
            "matmul_n": matmul_n, "mfu": round(flops / step_s / peak, 4),
            "mfu_best_step": round(flops / min(samples["step"]) / peak, 4)}


def spec_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    from longvivit.train.metrics import gpu_peak_tflops

    try:
        return gpu_peak_tflops(torch.cuda.get_device_name(device)) * 1e12
    except KeyError:
        return None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dims", nargs="+", default=["B", "tiny"], choices=sorted(DIMS))
    p.add_argument("--frames", type=int, default=64)
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--matmul-n", type=int, default=2048, help="side of the square peak matmul")
    common.add_threads_arg(p)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    common.set_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    n = args.matmul_n if device.type == "cpu" else max(args.matmul_n, 8192)
    results = [run_dims(d, args.frames, args.mask_ratio, args.rounds, device, dtype, n) for d in args.dims]
    common.emit({"benchmark": "mfu", "device": str(device), "dtype": str(dtype).replace("torch.", ""),
                 "spec_peak_flops_per_s": spec_peak(device), "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
