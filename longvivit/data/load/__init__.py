"""Loading: frame batches for the trainer and the evaluator, from shards or made on the device.

Every loader is a `Loader`: iterate it for one epoch of batches (`video` uint8 (B, T, H, W, C)
on the device, `real_frames` and `index` int64 (B,) on the CPU, `text_ids`/`text_mask`
(B, L)); `state_dict()`/`load_state_dict()` for an exact mid-epoch resume; `tokenizer`,
`decode_failures`, `samples_per_epoch`; `close()`. `open_loader` is the one place that picks
shards (loader.VideoLoader: streaming + DALI) or synthetic batches (synthetic.SyntheticBatches)
by `data.source`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, Protocol

if TYPE_CHECKING:
    import torch

    from longvivit.data.config import DataConfig


from longvivit.data.load.loader import build_loader
from longvivit.data.load.reader import clean_stale_shared_memory
from longvivit.data.load.synthetic import SyntheticBatches
from longvivit.data.load.tokenizer import make_tokenizer
from longvivit.distributed import collectives


class Loader(Protocol):
    decode_failures: int

    def __iter__(self) -> Iterator[dict]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def close(self) -> None: ...


def open_loader(data: DataConfig, split: str, device: torch.device, rank: int, world_size: int, training: bool,
                tokenizer: str = "sentencepiece", vocab_size: int = 0, replication: int = 1) -> Loader:
    """This rank's loader of `split` ("train" or "val") from `data.source`. tokenizer: the
    text tower's kind (model.text.tokenizer: its ids); vocab_size: the text tower's, for the
    ids synthetic batches draw. replication: how many consecutive ranks get the same batches
    (a sequence group, parallel.sequence). Shard loaders are built with clean_shm=False:
    call clean_shared_memory first, on every rank."""
    if data.source == "synthetic":
        return SyntheticBatches(data, split, device, rank // replication, world_size // replication, training,
                                vocab_size, tokenizer)
    return build_loader(data, split, device=device, rank=rank, world_size=world_size, training=training,
                        clean_shm=False, tokenizer=make_tokenizer(tokenizer, data.tokenizer), replication=replication)


def clean_shared_memory(data: DataConfig) -> None:
    """Drop the shared memory a killed run left behind, on every rank, before any rank makes
    its own (a rank cleaning while another creates its segments could remove them)."""
    if data.source == "shards":  # synthetic batches use no shared memory
        clean_stale_shared_memory()
    collectives.barrier()


__all__ = ["Loader", "open_loader", "clean_shared_memory"]
