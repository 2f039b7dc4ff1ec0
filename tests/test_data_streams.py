"""A source's shards as several folders mixed by weight (reader.open_split over streaming's
Streams): each epoch draws each stream's share of the samples, the order is a function of
the seed and the epoch, and a mid-epoch state_dict resumes the same order (streaming 0.13)."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from streaming import MDSWriter

from longvivit.config import ConfigError
from longvivit.data.load.reader import open_split


def write(folder: Path, n: int) -> str:
    with MDSWriter(out=str(folder), columns={"n": "int"}) as out:
        for i in range(n):
            out.write({"n": i})
    return str(folder)


@pytest.fixture()
def streams(tmp_path) -> list[dict]:
    # 10 and 30 samples at equal weights: 20 a stream an epoch (the small one twice over,
    # the large one two thirds of it), the epoch keeping the 40 samples the two hold
    return [{"path": write(tmp_path / "small", 10), "weight": 1.0}, {"path": write(tmp_path / "large", 30), "weight": 1}]


def test_each_stream_gives_its_weight_of_an_epoch(streams):
    dataset = open_split(streams, batch_size=4, shuffle=True, seed=3)
    indices = [s["index"] for s in dataset]  # indices run over the streams in order: small is 0-9
    assert len(indices) == len(dataset) == 40
    small = Counter(i for i in indices if i < 10)
    assert sum(small.values()) == 20 and set(small.values()) == {2}  # every small sample twice
    large = [i for i in indices if i >= 10]
    assert len(large) == len(set(large)) == 20
    again = [s["index"] for s in open_split(streams, batch_size=4, shuffle=True, seed=3)]
    assert again == indices  # a function of the seed (and epoch)


def test_a_mid_epoch_state_resumes_the_same_order(streams):
    whole = [s["index"] for s in open_split(streams, batch_size=4, shuffle=True, seed=3)]
    first = open_split(streams, batch_size=4, shuffle=True, seed=3)
    it = iter(first)
    assert [next(it)["index"] for _ in range(12)] == whole[:12]
    state = first.state_dict(12, from_beginning=False)  # as the loader asks (loader.VideoLoader.state_dict)
    del it, first
    resumed = open_split(streams, batch_size=4, shuffle=True, seed=3)
    resumed.load_state_dict(state)
    assert [s["index"] for s in resumed] == whole[12:]


def test_a_single_folder_reads_as_before(streams):
    alone = [s["index"] for s in open_split(streams[1]["path"], batch_size=4, shuffle=True, seed=3)]
    assert sorted(alone) == list(range(30))


def test_a_stream_list_is_checked_when_the_config_loads():
    from longvivit.config import load_config
    from longvivit.data.config import DataConfig

    with pytest.raises(ConfigError, match=r"^train.1.weight: 0 must be a number > 0"):
        load_config(DataConfig, {"train": [{"path": "/a"}, {"path": "/b", "weight": 0}]})
