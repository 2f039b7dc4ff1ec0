"""Bytes an autograd graph keeps for the backward pass, measured rather than modelled.

Used by the tests, the memory planner and the benchmarks: one definition of "activation
memory" for all of them.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch


def saved_bytes(fn: Callable[[], object], ignore: Iterable[torch.Tensor] = ()) -> int:
    """Run `fn()` and return the bytes of the distinct storages autograd saved for backward.

    Storages are deduplicated by identity (a tensor saved by several ops, or several views
    of one buffer, count once). Identity is the storage object, not its data pointer, so
    the count also works on FakeTensor/meta tensors, which have no data (the memory
    planner measures models that way without allocating). Storages of the tensors in `ignore` are left out;
    pass `model.parameters()` to count activations only (weights are saved by reference).
    Tensors saved inside checkpointed regions are not kept, so they do not count; the
    checkpoint's inputs are, so they do.
    """
    skip = {_storage_id(t) for t in ignore}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_id(t)
        if key not in skip:
            seen[key] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def _storage_id(t: torch.Tensor) -> int:
    """The address of the tensor's StorageImpl: shared by all its views, defined for fake
    and meta tensors too (whose data pointers are all 0). Saved tensors are kept alive by
    the graph while `fn` runs, so an address cannot be reused for another storage."""
    return t.untyped_storage()._cdata
