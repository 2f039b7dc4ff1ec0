"""Sequence parallelism for the video tower (DeepSpeed-Ulysses): one clip's tokens split over
N ranks, all-to-all to heads and back around attention.

Layout (`parallel.sequence: N` on W ranks, W a multiple of N): consecutive ranks form a
sequence group (ranks d*N .. d*N+N-1 share clip batch d, streaming's `replication`); the
ranks at one place of every sequence group form a data group (s, s+N, s+2N, ...), over which
the contrastive loss gathers embeddings. ZeRO-3 shards over all W ranks, as without it.

In a sequence group every rank builds the same kept tokens of the clip (the same masks: they
are drawn per data rank) and keeps its chunk of the sequence (`SequenceShard.split`: torch's
tensor_split sizes, so any token count works and the CLS token sits on the group's first
rank). Each block's attention exchanges q, k, v so that every rank holds the whole sequence
for H/N heads (`heads_to_sequence`), attends exactly as one rank would (the CLS key copies,
a padding mask), and exchanges back (`sequence_to_heads`). After the last block the
sequence is gathered whole on every rank (`gather`), and pooling, the head, the text tower
and the loss run as they do unsplit, identically on the N ranks of a group.

Gradients. Every collective here has its exact adjoint as backward (the all-to-all's is the
reverse all-to-all; the gather's sums the ranks' gradients of each chunk and hands a rank its
own). The N ranks of a group each compute the same loss L, so the gradients they hold sum to
those of N*L: N times the group's gradient, for every parameter (video, text, temperature).
DeepSpeed averages gradients over all W = N*D ranks, which gives the mean over the D data
groups of their gradients: exactly data parallelism over the D clip batches
(tests/test_sequence.py compares every gradient with the unsplit model's). Nothing is passed
to DeepSpeed as an mpu: its Ulysses mode would average over D only, counting it N times.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from longvivit.distributed import collectives


@dataclass(frozen=True)
class Layout:
    """Where rank `rank` of `world` sits with sequence groups of `sequence` ranks."""
    rank: int
    world: int
    sequence: int = 1

    @property
    def data_rank(self) -> int:
        """Which clip batch this rank works on: the loader's and the masks' rank."""
        return self.rank // self.sequence

    @property
    def data_world(self) -> int:
        """Clip batches per step over the job: the loader's and the loss's world size."""
        return self.world // self.sequence

    @property
    def place(self) -> int:
        """This rank's place in its sequence group (which chunk of the tokens it holds)."""
        return self.rank % self.sequence

    def sequence_groups(self) -> list[list[int]]:
        return [list(range(d * self.sequence, (d + 1) * self.sequence)) for d in range(self.data_world)]

    def data_groups(self) -> list[list[int]]:
        return [list(range(s, self.world, self.sequence)) for s in range(self.sequence)]


class SequenceShard:
    """This rank's part of a sequence group: which chunk of a token sequence of `length`
    tokens it holds (for_length binds one), and the differentiable collectives that move
    the chunks (see the module docstring)."""

    def __init__(self, group, place: int, size: int, length: int = 0):
        self.group, self.place, self.size, self.length = group, place, size, length

    def for_length(self, length: int) -> "SequenceShard":
        """The same place, for a whole sequence of `length` tokens (one forward pass's)."""
        return SequenceShard(self.group, self.place, self.size, length)

    def sizes(self) -> list[int]:
        """How many of the `length` tokens each place holds (tensor_split's: the first
        length % size places one more)."""
        return [self.length // self.size + (i < self.length % self.size) for i in range(self.size)]

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S, ...) -> (B, S_place, ...): this place's chunk of the whole sequence."""
        sizes = self.sizes()
        return x.narrow(1, sum(sizes[: self.place]), sizes[self.place])

    def heads_to_sequence(self, qkv: torch.Tensor) -> torch.Tensor:
        """(B, S_place, 3, H, d) -> (B, S, 3, H/N, d): the whole sequence, this place's
        slice of the heads."""
        heads = qkv.shape[3]
        return _Redistribute.apply(qkv, self, 3, [heads // self.size] * self.size, 1, self.sizes())

    def sequence_to_heads(self, y: torch.Tensor) -> torch.Tensor:
        """(B, S, H/N, d) -> (B, S_place, H, d): back to this place's tokens, all heads."""
        return _Redistribute.apply(y, self, 1, self.sizes(), 2, [y.shape[2]] * self.size)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """(B, S_place, ...) -> (B, S, ...), the whole sequence on every place."""
        return _Gather.apply(x, self, self.sizes())


class _Redistribute(torch.autograd.Function):
    """x split along `split_dim` (piece j, of split_sizes[j], to place j), the pieces received
    concatenated along `cat_dim` (place i's of cat_sizes[i]). Backward: the reverse."""

    @staticmethod
    def forward(ctx, x, shard: SequenceShard, split_dim: int, split_sizes: list[int], cat_dim: int,
                cat_sizes: list[int]):
        ctx.args = shard, split_dim, split_sizes, cat_dim, cat_sizes
        return _redistribute(x, *ctx.args)

    @staticmethod
    def backward(ctx, grad):
        shard, split_dim, split_sizes, cat_dim, cat_sizes = ctx.args
        return _redistribute(grad, shard, cat_dim, cat_sizes, split_dim, split_sizes), None, None, None, None, None


def _redistribute(x: torch.Tensor, shard: SequenceShard, split_dim: int, split_sizes: list[int], cat_dim: int,
                  cat_sizes: list[int]) -> torch.Tensor:
    # gloo's all_to_all takes pieces of one shape: each is padded to the largest on both
    # dimensions that vary (at most one token of N-1 places), and what arrives is trimmed
    common = list(x.shape)
    common[split_dim], common[cat_dim] = max(split_sizes), max(cat_sizes)
    pieces = [_pad_to(piece, common) for piece in x.split(split_sizes, dim=split_dim)]
    received = collectives.exchange(pieces, [torch.Size(common)] * shard.size, shard.group)
    return torch.cat([piece.narrow(split_dim, 0, split_sizes[shard.place]).narrow(cat_dim, 0, size)
                      for piece, size in zip(received, cat_sizes)], dim=cat_dim)


def _pad_to(x: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """x zero-padded at the end of each dimension to `shape` (x itself when it fits)."""
    if list(x.shape) == shape:
        return x
    widths = []
    for have, want in zip(reversed(x.shape), reversed(shape)):
        widths += [0, want - have]
    return torch.nn.functional.pad(x, widths)


class _Gather(torch.autograd.Function):
    """all_gather of uneven chunks along dim 1 (each padded to the longest, then trimmed).
    Backward: the gradient of the whole sequence summed over the group (every place's loss
    depends on every chunk), this place's chunk of it."""

    @staticmethod
    def forward(ctx, x, shard: SequenceShard, sizes: list[int]):
        ctx.shard, ctx.sizes = shard, sizes
        shape = list(x.shape)
        shape[1] = max(sizes)
        parts = collectives.all_gather_tensor(_pad_to(x, shape), shard.group)
        return torch.cat([p[:, :n] for p, n in zip(parts, sizes)], dim=1)

    @staticmethod
    def backward(ctx, grad):
        total = collectives.all_reduce(grad, group=ctx.shard.group)
        start = sum(ctx.sizes[: ctx.shard.place])
        return total.narrow(1, start, ctx.sizes[ctx.shard.place]).contiguous(), None, None


# ---------------------------------------------------------------------------- this process's groups

@dataclass
class _Groups:
    layout: Layout
    shard: Optional[SequenceShard]  # None with sequence 1: clips are not split
    data: object  # the data group (torch.distributed group), None: the whole world


_current: Optional[_Groups] = None


def setup(layout: Layout) -> None:
    """Make this job's sequence and data groups for this rank's `layout` (every rank calls
    it, after the process group starts); with sequence 1 there are none, and nothing changes."""
    global _current
    if (layout.rank, layout.world) != (collectives.rank(), collectives.world_size()):
        raise ValueError(f"{layout} is not this process's place: rank {collectives.rank()} of "
                         f"{collectives.world_size()}")
    if layout.sequence == 1:
        _current = _Groups(layout, None, None)
        return
    shard = data = None
    for ranks in layout.sequence_groups():  # every rank makes every group, in one order
        group = collectives.new_group(ranks)
        if layout.rank in ranks:
            shard = SequenceShard(group, layout.place, layout.sequence)
    for ranks in layout.data_groups():
        group = collectives.new_group(ranks)
        if layout.rank in ranks:
            data = group
    _current = _Groups(layout, shard, data)


def teardown() -> None:
    """Forget the groups (destroy_process_group frees them)."""
    global _current
    _current = None


def shard() -> Optional[SequenceShard]:
    """This rank's SequenceShard while sequence parallelism is set up, else None."""
    return _current.shard if _current is not None else None


def data_group():
    """The group the loss gathers over: this rank's data group, None (the whole world)
    without sequence parallelism."""
    return _current.data if _current is not None else None


def data_rank_world() -> tuple[int, int]:
    """(this rank's place in its data group, the data group's size); the default group's
    rank and size without sequence parallelism, (0, 1) without a process group."""
    if _current is not None:
        return _current.layout.data_rank, _current.layout.data_world
    return collectives.rank(), collectives.world_size()
