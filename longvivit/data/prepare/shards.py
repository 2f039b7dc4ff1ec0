"""Manifest -> MDS shards: every clip cut, resampled, resized and re-encoded once.

Each manifest row (manifest.py) becomes one sample: the clip [start, end) as a player shows
it (rotation, sample aspect ratio: video.py), at `fps`, short side `size`, encoded as VP9 in
webm (decodable on CPU and GPU) or H.264 in mp4 (DALI decodes it only on GPU), with a
keyframe at least every `keyframe_interval` frames so that decoding a few frames deep in a
long clip costs only the frames from the keyframe before them. With `still_images`, a still
image without an `end` becomes a one-frame sample stored as a JPEG (decoded by nvJPEG on a
GPU rather than by a video decoder). Columns: COLUMNS.

A row that cannot be used is skipped and listed with its reason in rejects.jsonl; it never
stops the run. summary.json holds the counts, written however the run ends. Bad options or
an input or output that cannot be used raise ValueError or OSError before anything is
written. An s3:// (or other streaming) URL as `out` uploads each shard as soon as it is
written (remote.py). `longvivit shards` (longvivit/cli/shards.py); docs/data.md.
"""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

from longvivit.config import check, choice, validated
from longvivit.data.prepare.manifest import Reject, Row, read_manifest, write_jsonl
from longvivit.data.prepare.output import prepare_out
from longvivit.data.prepare.remote import RemoteOutput, is_remote, open_remote_output, storage_errors
from longvivit.data.prepare.video import CODECS, ClipInfo, VideoError, encode, encode_jpeg, is_picture, read_resampled

COLUMNS = {
    "video": "bytes", "captions": "json", "duration_s": "float64", "fps": "float64",
    "num_frames": "int32", "width": "int32", "height": "int32", "id": "str", "codec": "str",
    "label": "str",  # the manifest's class name, "" when it has none
    "labels": "json",  # the manifest's class names (multi-label), [] when it has none
    "mc": "json",  # the manifest's multiple-choice items, [] when it has none
}
SUMMARY, REJECTS = "summary.json", "rejects.jsonl"
MAX_SHARD_BYTES = 1 << 32  # streaming's shards index samples with uint32 offsets


@dataclass(frozen=True)
class ShardOptions:
    fps: float = 1.0
    size: int = 256  # short side in pixels; 0 keeps the source size
    codec: str = choice(*CODECS)
    keyframe_interval: int = 8  # frames
    crf: int = 20  # constant-quality level (lower: better and bigger)
    still_images: bool = False  # a still image becomes a sample (a JPEG, or held start..end a clip)
    jpeg_quality: int = 95  # of a still image stored as JPEG (Pillow's 1-100 scale)

    def validate(self) -> None:
        check(self.fps > 0, "fps", f"{self.fps} must be > 0")
        check(math.isfinite(self.fps), "fps", f"{self.fps} is not a finite number")
        # encode() stores the rate as a fraction with a denominator of at most 1001
        check(Fraction(self.fps).limit_denominator(1001) > 0, "fps",
              f"{self.fps} is below the lowest rate a clip can store (1/1001)")
        check(self.size >= 0 and self.size % 2 == 0, "size", f"{self.size} must be an even number >= 0")
        check(self.keyframe_interval >= 1, "keyframe_interval", f"{self.keyframe_interval} must be >= 1")
        check(0 <= self.crf <= 63, "crf", f"{self.crf} is outside [0, 63]")
        check(1 <= self.jpeg_quality <= 100, "jpeg_quality", f"{self.jpeg_quality} is outside [1, 100]")


def transcode(row: Row, opts: ShardOptions) -> dict | Reject:
    """One manifest row -> one shard sample, or a Reject saying why not. Runs in a worker."""
    try:
        if not os.path.exists(row.video):
            raise VideoError("missing file", "no such file")
        if os.path.isfile(row.video) and os.path.getsize(row.video) == 0:
            raise VideoError("empty file", "zero bytes")
        picture = opts.still_images and row.end is None and is_picture(row.video)
        return picture_sample(row, opts) if picture else clip_sample(row, opts)
    except VideoError as err:
        return Reject(row.line, row.video, err.reason, err.detail)
    except Exception as err:  # noqa: BLE001 -- one bad input must never stop the run
        return Reject(row.line, row.video, "failed", f"{type(err).__name__}: {err}")


def clip_sample(row: Row, opts: ShardOptions) -> dict:
    """The row's clip encoded as a video (opts.codec): every video, and a still image held
    from start to end. Raises VideoError for input that cannot be used."""
    frames = read_resampled(row.video, opts.fps, opts.size or None, row.start, row.end,
                            still_images=opts.still_images)
    data, info = encode(frames, opts.fps, opts.codec, opts.keyframe_interval, opts.crf)
    return _sample(row, data, frames.duration_s, info, opts.codec)


def picture_sample(row: Row, opts: ShardOptions) -> dict:
    """A still image shown for one frame, stored as a JPEG (codec "jpeg") at
    opts.jpeg_quality: the way image data sets are stored, decoded by DALI's image decoder
    (nvJPEG on a GPU) where a one-frame clip would need a video decoder per image. Its pixels
    are those clip_sample would encode (the same resampling), in RGB rather than YUV."""
    frames = read_resampled(row.video, opts.fps, opts.size or None, row.start, None,
                            pix_fmt="rgb24", still_images=True)
    (rgb,) = [frame.to_ndarray() for frame in frames]
    rate = float(Fraction(opts.fps).limit_denominator(1001))  # as encode() rounds it
    info = ClipInfo(1, rate, rgb.shape[1], rgb.shape[0])
    return _sample(row, encode_jpeg(rgb, opts.jpeg_quality), frames.duration_s, info, "jpeg")


def _sample(row: Row, data: bytes, duration_s: float, info: ClipInfo, codec: str) -> dict:
    return {"video": data, "captions": row.captions, "duration_s": duration_s,
            "fps": info.fps, "num_frames": info.num_frames, "width": info.width,
            "height": info.height, "id": row.id, "codec": codec, "label": row.label,
            "labels": row.labels, "mc": row.mc}


def write_shards(manifest: str | Path, out: str | Path, opts: ShardOptions = ShardOptions(),
                 workers: int = 0, shard_size: str | int = "64mb",
                 compression: str | None = None, overwrite: bool = False,
                 progress: bool | None = None, part: tuple[int, int] = (0, 1)) -> dict:
    """Transcode every row of `manifest` into MDS shards in `out` (a folder, or a remote
    URL such as s3://bucket/prefix: see remote.py); returns the summary.
    workers=0 transcodes in this process; progress=None shows a bar only on a terminal;
    part=(i, n) takes only rows i, i+n, i+2n, ... (one task of an array job). Bad options or
    a manifest or output that cannot be used raise ValueError or OSError before anything is
    written; a bad row is only a reject."""
    validated(opts)
    size_limit = _writer_options(workers, shard_size, compression, part)
    entries = list(read_manifest(manifest))  # a missing or unreadable manifest fails first
    if not entries:
        raise ValueError(f"manifest {manifest}: no rows in it")
    entries = entries[part[0]::part[1]]
    if is_remote(str(out)):
        target = open_remote_output(str(out), overwrite, "shards")
    else:
        target = prepare_out(Path(out), overwrite, _is_shard_output, "shards")
    written, rejects, hours, video_bytes, stopped, shards = 0, [], 0.0, 0, None, []
    try:
        with _mds_writer(target, compression, size_limit) as writer:
            shards = writer.shards  # the index entries of the shards flushed so far
            results = _transcode_all(entries, opts, workers)
            bar = tqdm(results, total=len(entries), unit="video", desc="shards",
                       disable=None if progress is None else not progress)
            for entry, result in bar:
                if not isinstance(result, Reject):
                    result = _write(writer, entry, result)
                if isinstance(result, Reject):
                    rejects.append(result.to_json())
                    continue
                written += 1
                hours += result["duration_s"] / 3600
                video_bytes += len(result["video"])
    except BaseException as err:  # the summary says what was done, then the error goes on
        stopped = f"{type(err).__name__}: {err}"
        raise
    finally:
        summary = _finish(target, shards, written, rejects, hours, video_bytes, stopped)
    return summary


def _writer_options(workers: int, shard_size: str | int, compression: str | None,
                    part: tuple[int, int]) -> int:
    """Check the writing options before anything is read or written (streaming would refuse
    a bad size or compression only when the first shard is made, after transcoding); returns
    the shard size limit in bytes."""
    # streaming imports torch and transformers: only when writing, so that this module and
    # `longvivit synth` import without them (tests/test_layout.py)
    from streaming.base.compression import get_compressions
    from streaming.base.util import bytes_to_int

    if not isinstance(workers, int) or workers < 0:
        raise ValueError(f"--workers {workers}: must be >= 0 (0: transcode in this process)")
    i, n = part
    if not 0 <= i < n:
        raise ValueError(f"--part {i}/{n}: need 0 <= I < N")
    if compression is not None and compression not in get_compressions():
        names = sorted({c.split(":")[0] for c in get_compressions()})
        raise ValueError(f"--compression {compression}: not one of {', '.join(names)} "
                         "(optionally NAME:LEVEL, e.g. zstd:7)")
    try:
        size = bytes_to_int(shard_size)
    except (ValueError, OverflowError, AttributeError):
        size = None
    if size is None or not 0 < size < MAX_SHARD_BYTES:
        raise ValueError(f"--shard-size {shard_size}: not a size between 1b and 4gb "
                         "(e.g. 64mb)")
    return size


def _mds_writer(target: Path | RemoteOutput, compression: str | None, shard_size: int):
    """streaming's MDSWriter, except that it never writes a shard of no samples. Before a
    sample that would take the shard being built past the size limit, streaming flushes
    that shard even when it holds nothing, so a first sample bigger than the limit (a long
    clip against --shard-size) would leave an empty shard.00000.mds, whose 0 samples the
    reader divides by every epoch (numpy warnings). A sample bigger than the limit is still
    written, alone in its shard (tests/test_hour.py). A remote target: each shard is
    written to the staging folder, uploaded as soon as it is flushed and removed."""
    from streaming import MDSWriter  # imports torch + transformers: only when writing

    class Writer(MDSWriter):
        def flush_shard(self) -> None:
            if self.new_samples:
                super().flush_shard()

    out = (str(target.staging), target.url) if isinstance(target, RemoteOutput) else str(target)
    with storage_errors(target.url) if isinstance(target, RemoteOutput) else nullcontext():
        return Writer(out=out, columns=COLUMNS, compression=compression, size_limit=shard_size)


def _write(writer, row: Row, sample: dict) -> dict | Reject:
    try:
        writer.write(sample)
    except Exception as err:  # noqa: BLE001 -- a sample the writer refuses spoils only itself
        return Reject(row.line, row.video, "failed", f"writing: {type(err).__name__}: {err}")
    return sample


def _finish(target: Path | RemoteOutput, shards: list[dict], written: int, rejects: list[dict],
            hours: float, video_bytes: int, stopped: str | None) -> dict:
    """Write rejects.jsonl and summary.json beside the shards (uploaded, for a remote
    target); returns the summary."""
    remote = isinstance(target, RemoteOutput)
    local, out = (target.staging, target.url) if remote else (target, str(target))
    files = [s["zip_data"] or s["raw_data"] for s in shards]  # what each shard is stored as
    summary = {
        "written": written, "skipped": len(rejects),
        "reasons": dict(sorted(Counter(r["reason"] for r in rejects).items())),
        "hours": round(hours, 6), "video_bytes": video_bytes,
        "shard_bytes": sum(f["bytes"] for f in files), "shards": len(files),
        "out": out, "rejects": f"{out}/{REJECTS}",
    }
    if stopped:
        summary["stopped"] = stopped
    local.mkdir(parents=True, exist_ok=True)  # streaming removes a remote's staging folder
    write_jsonl(local / REJECTS, rejects)
    (local / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    if remote:
        try:
            target.upload(REJECTS, SUMMARY)
        finally:
            target.close()
    return summary


def _transcode_all(entries: list[Row | Reject], opts: ShardOptions,
                   workers: int) -> Iterator[tuple[Row | Reject, dict | Reject]]:
    """(entry, result) in manifest order; rows go through a pool of `workers` processes."""
    rows = [e for e in entries if isinstance(e, Row)]
    work = partial(transcode, opts=opts)
    if workers > 0 and len(rows) > 1:
        # spawn, not fork: the parent has torch (via streaming) loaded, and a forked copy of
        # its thread pools can deadlock. Workers import only PyAV and numpy.
        with mp.get_context("spawn").Pool(min(workers, len(rows))) as pool:
            yield from _merge(entries, pool.imap(work, rows, chunksize=1))
    else:
        yield from _merge(entries, map(work, rows))


def _merge(entries: list[Row | Reject], done: Iterable[dict | Reject]
           ) -> Iterator[tuple[Row | Reject, dict | Reject]]:
    done = iter(done)
    for entry in entries:
        yield entry, entry if isinstance(entry, Reject) else next(done)


def _is_shard_output(name: str) -> bool:
    return name in ("index.json", SUMMARY, REJECTS) or name.startswith("shard.")


def merge_parts(out: str | Path) -> dict:
    """Join the part folders OUT/*/ (slurm/shards.sbatch writes one per array task) into one
    dataset: their index files merge into OUT/index.json (streaming's merge_index; shard
    paths become part/shard...), their summaries into OUT/summary.json."""
    from streaming.base.util import merge_index  # imports torch + transformers: only when merging

    out = Path(out)
    parts = sorted(p.parent for p in out.glob(f"*/{SUMMARY}"))
    if not parts:
        raise FileNotFoundError(f"{out}: no part folders holding a {SUMMARY}")
    summaries = [_part_summary(p) for p in parts]
    written = [p for p, s in zip(parts, summaries) if s["written"]]
    if written:
        merge_index([str(p / "index.json") for p in written], str(out), keep_local=True)
    reasons = Counter()
    for s in summaries:
        reasons.update(s["reasons"])
    summary = {key: sum(s[key] for s in summaries)
               for key in ("written", "skipped", "video_bytes", "shard_bytes", "shards")}
    summary.update(reasons=dict(sorted(reasons.items())), hours=round(sum(s["hours"] for s in summaries), 6),
                   parts=len(parts), out=str(out), rejects=[s["rejects"] for s in summaries])
    (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _part_summary(part: Path) -> dict:
    """A part folder's summary.json, checked to hold what merge_parts adds up."""
    try:
        summary = json.loads((part / SUMMARY).read_text(encoding="utf-8"))
        for key in ("written", "skipped", "video_bytes", "shard_bytes", "shards", "hours"):
            float(summary[key])
        dict(summary["reasons"])
        str(summary["rejects"])
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{part / SUMMARY}: not a shards summary ({type(err).__name__}: "
                         f"{err})") from None
    return summary
