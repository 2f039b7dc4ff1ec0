"""What a run reports: TensorBoard scalars and images, a JSONL line per step, a progress bar (rank 0).

Throughput and utilisation:
    samples/s       global samples per second of step wall time
    tokens/s        visible (unmasked) video tokens per second
    TFLOP/s, MFU    model FLOPs (flops_per_sample * samples/s) against a peak per device:
                    on CPU the fp32 matmul rate measured at start, on GPU a spec table of
                    dense bf16 peaks by device name; `peak_tflops` in the run config overrides.
    data_wait       fraction of step time spent blocked on the data loader.
"""
from __future__ import annotations

import json
import math
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from longvivit.distributed import collectives as dist

if TYPE_CHECKING:
    from deepspeed import DeepSpeedEngine

    from longvivit.train.trainer import Trainer

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, from the vendors' spec sheets.
GPU_PEAK_TFLOPS = {
    "H200 NVL": 835.0, "H200": 989.0, "H100 SXM": 989.0, "H100 NVL": 835.0, "H100 PCIE": 756.0, "H100": 989.0,
    "GH200": 989.0, "B200": 2250.0, "A100": 312.0, "A10G": 70.0, "A10": 125.0, "L40S": 362.0,
    "L40": 181.0, "L4": 121.0, "V100": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0,
}


def measure_cpu_peak_tflops(n: int = 1024, reps: int = 4) -> float:
    """Best-of-`reps` fp32 square matmul rate on this process's threads (~0.1 s)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm up the BLAS
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e12


def gpu_peak_tflops(name: str) -> float:
    upper = name.upper()
    for key, peak in GPU_PEAK_TFLOPS.items():  # most specific names come first
        if key in upper:
            return peak
    raise KeyError(f"no spec peak for GPU {name!r}; set peak_tflops in the run config")


def peak_tflops(device: torch.device, override: float = 0.0) -> float:
    if override > 0:
        return override
    if device.type == "cuda":
        return gpu_peak_tflops(torch.cuda.get_device_name(device))
    return measure_cpu_peak_tflops()


def memory_gb(device: torch.device) -> float:
    """GPU: max allocated; CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


class StepTimer:
    """Splits wall time between waiting for data and the rest of the step."""

    def __init__(self) -> None:
        self.data = self.total = 0.0
        self._t = time.perf_counter()

    def data_ready(self, t_wait: float) -> None:
        self.data += t_wait

    def lap(self) -> tuple[float, float]:
        """(seconds since the last lap, data-wait seconds in it); resets both."""
        now = time.perf_counter()
        total, data = now - self._t, self.data
        self._t, self.data = now, 0.0
        return total, data


class RunLogger:
    """TensorBoard + metrics.jsonl + tqdm on rank 0; a no-op on the other ranks."""

    def __init__(self, out: str | Path, rank: int, total_steps: int, start_step: int = 0,
                 progress: bool = True) -> None:
        self.active = rank == 0
        self.writer = self.bar = self.jsonl = None
        if not self.active:
            return
        # tensorboard: a second of imports (protobuf, numpy plugins), paid on rank 0 only
        from torch.utils.tensorboard import SummaryWriter

        out = Path(out)
        self.tb_dir = out / "tb"
        self.writer = SummaryWriter(str(self.tb_dir))
        self.jsonl = open(out / "metrics.jsonl", "a", buffering=1)
        if self.jsonl.tell() and not _ends_in_newline(out / "metrics.jsonl"):
            self.jsonl.write("\n")  # a run killed mid-line: this one starts on a line of its own
        if progress:
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", dynamic_ncols=True,
                            mininterval=2.0)

    def config(self, yaml_text: str) -> None:
        if self.active:
            self.writer.add_text("config", "```\n" + yaml_text + "\n```", 0)

    def scalars(self, step: int, values: dict, prefix: str = "train") -> None:
        if not self.active:
            return
        for key, value in values.items():
            self.writer.add_scalar(f"{prefix}/{key}", float(value), step)
        self.jsonl.write(json.dumps({"kind": prefix, "step": step, **_plain(values)}) + "\n")

    def image(self, step: int, tag: str, image) -> None:
        """A picture, (H, W, 3) uint8 (e.g. eval/gallery)."""
        if self.active:
            self.writer.add_image(tag, image, step, dataformats="HWC")

    def record(self, step: int, **fields) -> None:
        """A JSONL-only line (e.g. the batch indices a step consumed)."""
        if self.active:
            self.jsonl.write(json.dumps({"step": step, **_plain(fields)}) + "\n")

    def progress(self, step: int, loss: float, samples_per_s: float) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{loss:.4f}", samples_s=f"{samples_per_s:.1f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.flush()
            self.writer.close()
        if self.jsonl is not None:
            self.jsonl.close()


def _ends_in_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, 2)
        return f.read(1) == b"\n"


def read_metrics(out: str | Path) -> list[dict]:
    """metrics.jsonl of run directory `out` as it stands: one JSON object per line, in
    order, without the lines a resume superseded. A {"kind": "resume", "step": S} line
    (written when a run resumes from its checkpoint of step S) supersedes every earlier
    line of a step after S (a killed run got that far; the resumed one runs those steps
    again) and, with "redo_eval": true, the earlier eval line of step S (an eval that was
    due there and did not finish runs again). A line cut short by a kill is skipped."""
    path = Path(out) / "metrics.jsonl"
    lines: list[dict] = []
    for text in path.read_text().splitlines() if path.is_file() else []:
        try:
            line = json.loads(text)
        except json.JSONDecodeError:
            continue
        if line.get("kind") == "resume":
            step, redo = line["step"], line.get("redo_eval")
            lines = [x for x in lines if x.get("step", 0) <= step
                     and not (redo and x.get("kind") == "eval" and x.get("step") == step)]
        lines.append(line)
    return lines


def _plain(values: dict) -> dict:
    out = {}
    for k, v in values.items():
        if isinstance(v, torch.Tensor):
            v = v.tolist()
        out[k] = v
    return out


def throughput(samples: int, visible_tokens: int, seconds: float, flops_per_sample: float,
               peak_tflops_per_device: float, world_size: int) -> dict:
    """samples/s, visible tokens/s, model TFLOP/s (all devices) and MFU for one logging window."""
    sps = samples / max(seconds, 1e-9)
    tflops = flops_per_sample * sps / 1e12
    return {"samples_per_s": sps, "tokens_per_s": visible_tokens / max(seconds, 1e-9),
            "tflops": tflops, "mfu": tflops / (peak_tflops_per_device * world_size)}


@dataclass
class Throughput:
    """Samples trained over some steps, their visible tokens and model FLOPs, their wall
    time, and of it the time spent waiting for batches (mean over ranks)."""
    samples: int = 0
    seconds: float = 0.0
    data_wait: float = 0.0
    tokens: float = 0.0
    flops: float = 0.0

    def add(self, other: Throughput) -> None:
        self.samples += other.samples
        self.seconds += other.seconds
        self.data_wait += other.data_wait
        self.tokens += other.tokens
        self.flops += other.flops

    def per_second(self, amount: float) -> float:
        return amount / max(self.seconds, 1e-9)


def grad_norm(engine: DeepSpeedEngine) -> float:
    norm = engine.get_global_grad_norm()
    return float(norm) if norm is not None else float("nan")


def log_step(trainer: Trainer, out: dict, timer: StepTimer) -> float:
    """metrics.jsonl every step (loss, lr, the step's source by name, its batch indices in
    that source, skipped); TensorBoard every log_every and at every skipped step. Returns the
    loss (mean over ranks: non-finite on every rank if it is on one)."""
    loss, failures, data_wait, broken = dist.dist_mean([out["loss"].item(), trainer.sources.decode_failures,
                                                        timer.data, float(not out.get("params_finite", True))])
    out["params_nonfinite"] = broken > 0  # on any rank (nonfinite_since)
    seconds, _ = timer.lap()
    source = trainer.sources[out["source"]]
    samples = source.batch_size * trainer.cfg.grad_accum * trainer.layout.data_world  # distinct clips
    trainer.window.add(Throughput(samples, seconds, data_wait, samples * source.tokens, samples * source.flops))
    trainer.source_losses.setdefault(source.name, []).append(loss)
    step = trainer.state.step
    trainer.log.record(step, kind="step", loss=loss, lr=out["lr"], source=source.name, indices=out["indices"],
                       skipped=out["skipped"])
    trainer.log.progress(step, loss, trainer.window.per_second(trainer.window.samples))
    due = step % max(1, trainer.cfg.log_every) == 0 or step == trainer.cfg.steps
    if due or out["skipped"] or not math.isfinite(loss):
        log_scalars(trainer, out, loss, failures * trainer.layout.data_world)
    return loss


def log_scalars(trainer: Trainer, out: dict, loss: float, failures: float) -> None:
    """The TensorBoard line of the steps since the last one."""
    w = trainer.window
    scalars = {"loss": loss, "lr": out["lr"], "logit_scale": float(out["logit_scale"]),
               "grad_norm": grad_norm(trainer.engine), "skipped_steps": trainer.engine.skipped_steps,
               "data_wait": w.per_second(w.data_wait),
               "decode_failures": failures, "memory_gb": memory_gb(trainer.device),
               **throughput(w.samples, w.tokens, w.seconds, w.flops / max(w.samples, 1), trainer.peak,
                            trainer.d.world_size)}
    if len(trainer.sources) > 1:  # each source's mean loss over its steps since the last line
        scalars.update({f"loss_{source}": sum(losses) / len(losses)
                        for source, losses in trainer.source_losses.items()})
    trainer.source_losses = {}
    trainer.log.scalars(trainer.state.step, scalars)
    trainer.total.add(w)
    trainer.window = Throughput()
