"""Which tubelet tokens survive masking.

Tokens of a clip are numbered t * S + s over the (T', S) grid of temporal slices T' and
spatial positions S = (H/p) * (W/p). Masking returns, per sample, the sorted indices of the
tokens to keep; the encoder gathers those and never sees the others (they are removed, not
zeroed), so the transformer runs on fewer tokens.

  random: each sample keeps round((1 - r) * N) tokens drawn uniformly (argsort of noise).
  tube:   each sample keeps round((1 - r) * S) spatial positions, the same in every temporal
          slice, so it keeps T' * round((1 - r) * S) tokens (equal to round((1 - r) * N)
          whenever (1 - r) * S is a whole number, e.g. 75% of a 14x14 or 4x4 grid).

Passing a torch.Generator makes the masks reproducible; the noise is drawn on the
generator's device and moved, so a seed gives the same mask on CPU and GPU.

No host syncs (torch.cuda.set_sync_debug_mode's sense): what moves from the CPU to a GPU
goes through pinned memory without blocking (`to_device`), and the widths that shape the
result are read from the CPU copy of real_slices; only real_slices on a GPU, which has
to be read back, costs one.

Padded clips (`sample_visible_padded`): a clip shorter than the model's frames arrives with
its last frame repeated (longvivit/data/load/decode.py), so its real tokens are the first real_slices * S
in this numbering. Masking draws only among them, keeping the ratio of the clip's own
tokens (a 10-frame clip at 75% keeps a quarter of its 10 frames' tokens, not a quarter of
64 frames' worth), and the batch is padded to its longest row with a validity mask. The
valid entries of a row lead it, and how many there are is known on the host
(`padded_counts`), which is what lets the encoder pack rows without reading the mask.
"""
from __future__ import annotations

from typing import Optional

import torch

SCHEMES = ("random", "tube")


def visible_count(slices: int, spatial: int, mask_ratio: float, scheme: str = "random") -> int:
    """Tokens per sample after masking a (slices, spatial) token grid."""
    _check(mask_ratio, scheme)
    if scheme == "tube":
        return slices * max(1, round((1.0 - mask_ratio) * spatial))
    return max(1, round((1.0 - mask_ratio) * slices * spatial))


def sample_visible(batch: int, slices: int, spatial: int, mask_ratio: float, scheme: str = "random",
                   generator: Optional[torch.Generator] = None,
                   device: Optional[torch.device] = None) -> Optional[torch.Tensor]:
    """Sorted indices of the kept tokens, (batch, visible_count) int64; None when nothing
    is masked (mask_ratio 0), so callers take the dense path."""
    _check(mask_ratio, scheme)
    if mask_ratio == 0:
        return None
    if scheme == "tube":
        keep = _keep_lowest_noise(batch, spatial, mask_ratio, generator, device)  # (B, s)
        offsets = torch.arange(slices, device=keep.device) * spatial  # (T',)
        return (offsets[None, :, None] + keep[:, None, :]).flatten(1)  # (B, T' * s), sorted
    return _keep_lowest_noise(batch, slices * spatial, mask_ratio, generator, device)  # (B, n)


def _keep_lowest_noise(batch: int, n: int, mask_ratio: float, generator: Optional[torch.Generator],
                       device: Optional[torch.device]) -> torch.Tensor:
    keep = max(1, round((1.0 - mask_ratio) * n))
    noise_device = generator.device if generator is not None else device
    noise = torch.rand(batch, n, generator=generator, device=noise_device)  # (B, n)
    index = noise.argsort(dim=1)[:, :keep].sort(dim=1).values  # (B, keep)
    return to_device(index, device)


def to_device(x: torch.Tensor, device: Optional[torch.device]) -> torch.Tensor:
    """`x` on `device` (None: where it is) without a host sync. A plain copy from pageable
    CPU memory to a GPU waits for the GPU (torch: copy then stream synchronize; CUDA itself
    syncs the stream before a pageable async copy); from pinned memory the copy is queued
    on the stream and the host goes on (the pinned block is held until the copy is done)."""
    if device is None or x.device == torch.device(device):
        return x
    if x.device.type != "cpu" or torch.device(device).type == "cpu":
        return x.to(device)  # to the host: the values must be there when this returns
    if torch.device(device).type == "cuda":
        x = x.pin_memory()
    return x.to(device, non_blocking=True)


def _check(mask_ratio: float, scheme: str) -> None:
    if not 0.0 <= mask_ratio < 1.0:
        raise ValueError(f"mask_ratio {mask_ratio} is outside [0, 1)")
    if scheme not in SCHEMES:
        raise ValueError(f"mask_scheme {scheme!r} is not one of {', '.join(SCHEMES)}")


def padded_counts(spatial: int, mask_ratio: float, scheme: str, real_slices: torch.Tensor) -> torch.Tensor:
    """(B,) int64 on the host: how many tokens row b of sample_visible_padded keeps, its
    leading valid entries (the rest are fillers). real_slices on the CPU, clamped to the
    clip's slices already. The same float32 arithmetic as on any device: the counts the
    host reads are the ones the device's rows hold."""
    if scheme == "tube":
        return real_slices * max(1, round((1.0 - mask_ratio) * spatial))
    return (real_slices * spatial * (1.0 - mask_ratio)).round().clamp(min=1).long()


def sample_visible_padded(slices: int, spatial: int, mask_ratio: float, scheme: str,
                          real_slices: torch.Tensor, generator: Optional[torch.Generator] = None,
                          device: Optional[torch.device] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Kept tokens of clips whose first real_slices[b] temporal slices are content and the
    rest padding: (index (B, n) int64, valid (B, n) bool). Row b keeps the tokens masking at
    `mask_ratio` keeps of a (real_slices[b], spatial) grid, sorted, then filler entries
    (index 0, valid False) up to the longest row. Tube masking keeps whole slices, so every
    row is slice-major: (B, n) views as (B, n // s, s) with padding slices at the end.

    real_slices on the CPU costs no host sync (the row width is read from it); on a GPU
    its maximum is read back, one sync: the width is a shape, decided on the host."""
    _check(mask_ratio, scheme)
    batch = real_slices.shape[0]
    host = real_slices.clamp(1, slices)  # (B,), where it came
    real = to_device(host, device)  # (B,)
    kept_host = padded_counts(spatial, mask_ratio, scheme, host.cpu())  # (B,) on the host
    kept = to_device(kept_host, real.device)  # (B,)
    width = int(kept_host.max())
    if scheme == "tube":
        positions = _keep_lowest_noise(batch, spatial, mask_ratio, generator, device)  # (B, kept)
        offsets = torch.arange(slices, device=positions.device) * spatial
        index = (offsets[None, :, None] + positions[:, None, :]).flatten(1)[:, :width]
        valid = torch.arange(width, device=index.device)[None] < kept[:, None]
        return index.masked_fill(~valid, 0), valid
    n = slices * spatial
    noise_device = generator.device if generator is not None else device
    noise = to_device(torch.rand(batch, n, generator=generator, device=noise_device), device)  # (B, N)
    noise = noise.masked_fill(torch.arange(n, device=noise.device)[None] >= (real * spatial)[:, None], 2.0)
    order = noise.argsort(dim=1)[:, :width]  # padding tokens (noise 2) last
    valid = torch.arange(width, device=order.device)[None] < kept[:, None]
    index = order.masked_fill(~valid, n).sort(dim=1).values  # kept tokens sorted, fillers (n) last
    return index.masked_fill(~valid, 0), valid
