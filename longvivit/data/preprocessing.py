"""How a trained model's clips were made, for preprocessing raw videos the same way.

The shards fix a clip's frame rate and short side (`longvivit shards --fps --size`), the run
config the frames, sampling and square size the loader feeds the model. `PreprocessConfig`
holds all five; an export keeps it as preprocess.json (longvivit/train/export.py) so that
a model used away from its shards still preprocesses as it was trained, and
longvivit/use/preprocess.py applies it.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from longvivit.config import check, choice, validated
from longvivit.data.config import DataConfig, shard_streams

GEOMETRY_SAMPLES = 8  # shard samples read to find the shard size
PREPROCESS_FILE = "preprocess.json"


@dataclass(frozen=True)
class PreprocessConfig:
    """How a clip becomes the model's input: the shards' resampling (fps, short_side) and
    the loader's selection, crop and size (data.frames, data.sampling, data.image_size)."""
    fps: float = 1.0  # the shard FPS
    short_side: int = 256  # the shards' short side in pixels (0: the source's size, `shards --size 0`)
    frames: int = 16  # frames fed to the model (data.frames)
    sampling: str = choice("uniform", "fps")  # data.sampling
    image_size: int = 224  # square side fed to the model (data.image_size)

    def validate(self) -> None:
        check(self.fps > 0, "fps", f"{self.fps} must be > 0")
        check(self.short_side >= 0, "short_side", f"{self.short_side} must be >= 0")
        check(self.frames > 0, "frames", f"{self.frames} must be > 0")
        check(self.image_size > 0, "image_size", f"{self.image_size} must be > 0")

    def to_json(self) -> dict:
        return asdict(self)


def config_for(data: DataConfig, shards: str = "") -> PreprocessConfig:
    """A run's preprocessing: its data.frames/sampling/image_size, and the FPS and short
    side of `shards` (a local shard folder; when not given data.val, else the first video
    source's shards that can be read). Shards that cannot be read leave the defaults (1 FPS,
    short side 256)."""
    fps, short_side = PreprocessConfig.fps, PreprocessConfig.short_side
    for folder in ([shards] if shards else [data.val, *video_shard_folders(data)]):
        geometry = shard_geometry(folder)
        if geometry is not None:
            fps, short_side = geometry
            break
    return validated(PreprocessConfig(fps, short_side, data.frames, data.sampling, data.image_size))


def video_shard_folders(data: DataConfig) -> list[str]:
    """The shard folders of the run's video sources: data.sources' (each stream of a source
    that mixes several), or the older form's data.train."""
    sources = [src.shards for src in data.sources if src.kind == "video"] or [data.train]
    return [path for shards in sources if shards for path, _ in shard_streams(shards)]


def shard_geometry(folder: str) -> tuple[float, int] | None:
    """(FPS, short side) of a local shard folder, from its first samples' fps, width and
    height columns: the short side when they all share one, 0 when they differ (shards
    written at the source size); None when the folder holds no readable shards."""
    if not folder or "://" in folder or not (Path(folder) / "index.json").is_file():
        return None
    # streaming imports torch and transformers: only when shards are read
    from streaming import LocalDataset

    try:
        dataset = LocalDataset(local=str(folder))
        samples = [dataset[i] for i in range(min(GEOMETRY_SAMPLES, len(dataset)))]
    except Exception:  # noqa: BLE001 -- compressed or broken shards: the defaults stand
        return None
    videos = [s for s in samples if s.get("codec") != "jpeg"]
    if not videos:
        return None
    sides = {min(int(s["width"]), int(s["height"])) for s in videos}
    return float(videos[0]["fps"]), (sides.pop() if len(sides) == 1 else 0)


def read_preprocess_json(path: str | Path) -> PreprocessConfig:
    return validated(PreprocessConfig(**json.loads(Path(path).read_text())))


def write_preprocess_json(cfg: PreprocessConfig, path: str | Path) -> None:
    Path(path).write_text(json.dumps(cfg.to_json(), indent=2) + "\n")
