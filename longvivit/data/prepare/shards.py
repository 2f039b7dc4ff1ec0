"""Manifest -> MDS shards: every clip cut, resampled, resized and re-encoded once.

    longvivit shards MANIFEST --out DIR|URL [--fps 1] [--size 256] [--codec vp9|h264]
                     [--keyframe-interval 8] [--crf 20] [--workers N]
                     [--shard-size 64mb] [--compression zstd] [--overwrite] [--part I/N]
                     [--still-images [--jpeg-quality 95]]
    longvivit shards --merge DIR      (join DIR/*/ written by slurm/shards.sbatch parts)

Each manifest row (see manifest.py) becomes one sample: the clip [start, end) (seconds
from the start of the video), as a player shows it (rotation, sample aspect ratio: see
video.py), at `fps`, short side `size` (shown aspect kept), encoded as
VP9 in webm (decodable on CPU and GPU) or H.264 in mp4 (DALI decodes it only on GPU), with
a keyframe at least every `keyframe-interval` frames so that decoding a few frames deep in
a long clip costs only the frames from the keyframe before them. With --still-images, a
still image (PNG, JPEG, ...) without an `end` becomes a one-frame sample stored as a JPEG
(codec "jpeg", Pillow at --jpeg-quality), the way image-text data sets are stored and
decoded on GPUs (nvJPEG) rather than as a one-frame video; with an `end` it becomes a clip
of the picture held from `start` to `end`. Shards of one-frame video clips, as stills were
written before, stay readable.

Columns: video (encoded bytes: a webm/mp4 clip, or a JPEG), captions (list of str),
duration_s (the source seconds the clip covers: end - start, or up to the end of the
video), fps, num_frames, width, height, id, codec (vp9, h264 or jpeg), label.

A row that cannot be used (missing, unreadable, empty, corrupt or truncated file, a decode
error, no video stream, a still image without --still-images, no frames in range, empty or
undecodable caption, duplicate id, malformed row) is skipped and listed with its reason in
DIR/rejects.jsonl; it never stops the run. DIR/summary.json holds the counts, and the last
line of stdout is the same summary as one JSON line; both are written however the run
ends. The exit status is 1 when nothing could be written, and 2, with one line on stderr
and nothing created, for bad input: an option out of range (--workers -1, --shard-size
lots, --compression bogus, --part 3/2, --fps 0), a manifest that is missing, a folder,
UTF-16 or without a row, or an --out that cannot be a folder.

--out s3://bucket/prefix (or another URL streaming writes to) uploads each shard as soon as
it is written, then index.json, rejects.jsonl and summary.json; only the shard being built
stays on local disk. The store, bucket and prefix are checked before any clip is transcoded
(remote.py): an unreachable endpoint (S3_ENDPOINT_URL), a missing bucket, refused
credentials or a non-empty prefix without --overwrite is a one-line error naming the URL.
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Iterable, Iterator

from longvivit.config import ArgumentParser, check, choice, validated
from longvivit.data.prepare.manifest import Reject, Row, read_manifest, write_jsonl
from longvivit.data.prepare.output import prepare_out
from longvivit.data.prepare.remote import RemoteOutput, is_remote, open_remote_output, storage_errors
from longvivit.data.prepare.video import CODECS, ClipInfo, VideoError, encode, encode_jpeg, is_picture, read_resampled

COLUMNS = {
    "video": "bytes", "captions": "json", "duration_s": "float64", "fps": "float64",
    "num_frames": "int32", "width": "int32", "height": "int32", "id": "str", "codec": "str",
    "label": "str",  # the manifest's class name, "" when it has none
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
    (nvJPEG on a GPU) where a one-frame clip needed a video decoder per image. Its pixels
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
            "height": info.height, "id": row.id, "codec": codec, "label": row.label}


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
    from tqdm import tqdm

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
    clip against --shard-size) left an empty shard.00000.mds, whose 0 samples the reader
    divides by every epoch (numpy warnings). A sample bigger than the limit is still
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
    from streaming.base.util import merge_index

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


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="longvivit shards", description=__doc__.split("\n\n")[0])
    p.add_argument("manifest", nargs="?", help="JSONL or CSV manifest")
    p.add_argument("--out", help="output directory for the MDS shards, or a remote URL "
                   "(s3://bucket/prefix; S3_ENDPOINT_URL for an S3-compatible server)")
    p.add_argument("--merge", metavar="DIR", help="instead of writing: merge the part folders "
                   "DIR/*/ (one per slurm/shards.sbatch array task) into one dataset in DIR")
    p.add_argument("--fps", type=float, default=ShardOptions.fps)
    p.add_argument("--size", type=int, default=ShardOptions.size,
                   help="short side in pixels (0: keep the source size)")
    p.add_argument("--codec", choices=list(CODECS), default=ShardOptions.codec)
    p.add_argument("--keyframe-interval", type=int, default=ShardOptions.keyframe_interval)
    p.add_argument("--crf", type=int, default=ShardOptions.crf)
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="transcoding processes (0: in this process)")
    p.add_argument("--shard-size", default="64mb", help="shard size limit, e.g. 64mb")
    p.add_argument("--compression", default=None, help="e.g. zstd (video bytes are already "
                   "compressed: this mostly helps the captions)")
    p.add_argument("--overwrite", action="store_true", help="replace existing shards in --out")
    p.add_argument("--part", default=(0, 1), type=_parse_part, metavar="I/N",
                   help="write only rows I, I+N, I+2N, ... (array jobs; see slurm/shards.sbatch)")
    p.add_argument("--still-images", action="store_true",
                   help="take still images (PNG, JPEG, ...): one frame, stored as a JPEG, or "
                        "with an end, a clip of the picture held from start to end "
                        "(default: rejected)")
    p.add_argument("--jpeg-quality", type=int, default=ShardOptions.jpeg_quality,
                   help="JPEG quality of the still images (--still-images)")
    a = p.parse_args(argv)
    if a.merge:
        return _print_summary(merge_parts, a.merge)
    if not a.manifest or not a.out:
        p.error("a MANIFEST and --out are required (or --merge DIR)")
    opts = ShardOptions(a.fps, a.size, a.codec, a.keyframe_interval, a.crf, a.still_images,
                        a.jpeg_quality)
    return _print_summary(write_shards, a.manifest, a.out, opts, a.workers, a.shard_size,
                          a.compression, a.overwrite, None, a.part)


def _parse_part(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected I/N, e.g. 3/16") from None
    if not 0 <= i < n:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 <= I < N")
    return i, n


def _print_summary(fn, *args) -> int:
    """Run a writer; its summary is the last line of stdout. Exit 1 when nothing was written."""
    try:
        summary = fn(*args)
    except (ValueError, OSError) as err:  # bad options, an output refused, a store unreachable
        print(f"longvivit shards: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0 if summary["written"] else 1
