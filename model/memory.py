"""Bytes an autograd graph keeps for the backward pass, measured rather than modelled.

Used by the tests, the memory planner and the benchmarks: one definition of "activation
memory" for all of them.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch


def saved_bytes(fn: Callable[[], object], ignore: Iterable[torch.Tensor] = ()) -> int:
    """Run `fn()` and return the bytes of the distinct storages autograd saved for backward.

    Storages are deduplicated by data pointer (a tensor saved by several ops, or several
    views of one buffer, count once). Storages of the tensors in `ignore` are left out;
    pass `model.parameters()` to count activations only (weights are saved by reference).
    Tensors saved inside checkpointed regions are not kept, so they do not count; the
    checkpoint's inputs are, so they do.
    """
    skip = {t.untyped_storage().data_ptr() for t in ignore}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())
