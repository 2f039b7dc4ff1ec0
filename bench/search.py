"""Search time: exact (torch matrix product, longvivit.use.search.top_k) against faiss, by index size.

    .venv/bin/python bench/search.py > bench/results/search.json     (~5 min on 2 cores, ~4 GB)

Random L2-normalised rows (the index's own form) of the L preset's embed dimension
(configs long_L256 / short_L16: 768), ROWS from 1e3 to 1e6 (3 GB of float32 at 1e6: the rows
are held once, every size a prefix of them), and a batch of 1, 16 and 64 normalised queries
(faiss searches fewer than 20 queries row by row, more by BLAS), k 10; each timing sample
runs the search max(1, 300,000 / rows) times and divides.
Cases, taking turns in each round (common.interleaved), medians over the rounds:

- exact: top_k, what `longvivit search` runs by default;
- faiss: faiss's flat inner-product search of the same rows in place (faiss.knn, the kernel
  IndexFlatIP.search runs), what `longvivit search --backend faiss` runs (faiss_top_k calls
  faiss.knn on the rows, no copy for float32 rows);
- faiss+build: an IndexFlatIP built from the rows (one copy of them) on every call, then
  searched: the alternative the CLI does not take; up to --build-max-rows only (the copy
  doubles the memory);
- ivf: an IndexIVFFlat (sqrt(rows) cells, nprobe = cells / 8) built once per size, its
  query time, build time and recall@k against exact; up to --ivf-max-rows.

The crossover is computed from the medians: the size from which faiss (faiss+build) is
faster than exact at every larger size measured, and the size where the log of the time
ratio, interpolated linearly in log(rows) between the two sizes around it, crosses zero.
One torch thread and one faiss (OpenMP) thread by default (common.py's reasoning).

Prints one JSON object; bench/report.py renders it into RESULTS.md.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

from longvivit.model.presets import PRESETS  # noqa: E402
from longvivit.use.search import faiss_index, faiss_top_k, import_faiss, top_k  # noqa: E402

SIZES = [1_000, 3_000, 10_000, 30_000, 100_000, 300_000, 1_000_000]
REPEAT_ROWS = 300_000  # a sample of n rows times max(1, REPEAT_ROWS // n) calls
IVF_MIN_ROWS = 10_000  # below, too few rows to train sqrt(rows) cells (faiss wants 39 per cell)


def repeated(fn, times: int):
    def run() -> None:
        for _ in range(times):
            fn()
    return run


def random_rows(n: int, dim: int, seed: int, chunk: int = 100_000) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    out = torch.empty(n, dim)
    for start in range(0, n, chunk):
        block = torch.randn(min(chunk, n - start), dim, generator=g)
        out[start:start + chunk] = torch.nn.functional.normalize(block, dim=1)
    return out


def crossover(sizes: list[int], exact: list[float], other: list[float]) -> dict:
    """Where `other` becomes faster than `exact`: faster_from (the smallest measured size from
    which it is faster at every larger one; None if not at the largest) and rows (log-log
    interpolated size where the time ratio crosses 1 just below faster_from; None if faster
    already at the smallest or never)."""
    faster = [o < e for o, e in zip(other, exact)]
    if not faster[-1]:
        return {"faster_from": None, "rows": None}
    i = len(faster) - 1
    while i > 0 and faster[i - 1]:
        i -= 1
    if i == 0:
        return {"faster_from": sizes[0], "rows": None}
    r0, r1 = math.log(other[i - 1] / exact[i - 1]), math.log(other[i] / exact[i])  # r0 >= 0 > r1
    x0, x1 = math.log(sizes[i - 1]), math.log(sizes[i])
    return {"faster_from": sizes[i], "rows": int(round(math.exp(x0 + (x1 - x0) * r0 / (r0 - r1)), -2))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    p.add_argument("--dim", type=int, default=PRESETS["L"].embed_dim)
    p.add_argument("--queries", type=int, nargs="+", default=[1, 16, 64], help="query batch sizes (default 1 16 64)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--build-max-rows", type=int, default=300_000)
    p.add_argument("--ivf-max-rows", type=int, default=100_000)
    common.add_threads_arg(p)
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    common.set_threads(args.threads)
    faiss = import_faiss()
    faiss.omp_set_num_threads(args.threads)
    sizes = sorted(args.sizes)
    rows = random_rows(sizes[-1], args.dim, seed=0)
    xb = rows.numpy()  # a view: faiss.knn reads the same memory
    results = {}
    for nq in args.queries:
        queries = random_rows(nq, args.dim, seed=1)
        xq = np.ascontiguousarray(queries.numpy())
        per_size = []
        for n in sizes:
            common.log(f"{nq} queries, {n} rows")
            cases = {"exact": lambda n=n: top_k(queries, rows[:n], args.k),
                     "faiss": lambda n=n: faiss.knn(xq, xb[:n], args.k, metric=faiss.METRIC_INNER_PRODUCT)}
            if n <= args.build_max_rows:
                cases["faiss+build"] = lambda n=n: faiss_top_k(queries, rows[:n], args.k, faiss_index(rows[:n]))
            ivf = None
            if IVF_MIN_ROWS <= n <= args.ivf_max_rows:
                nlist = max(1, round(math.sqrt(n)))
                ivf = {"nlist": nlist, "nprobe": max(1, nlist // 8)}
                ivf["build_s"] = common.timed(lambda: ivf.setdefault(
                    "index", faiss_index(rows[:n], nlist=nlist, nprobe=ivf["nprobe"])))
                cases["ivf"] = lambda: ivf["index"].search(xq, args.k)
            repeat = max(1, REPEAT_ROWS // n)  # calls per sample: each sample some ms at least
            samples = common.interleaved({c: repeated(fn, repeat) for c, fn in cases.items()}, args.rounds)
            samples = {c: [x / repeat for x in s] for c, s in samples.items()}
            entry = {"rows": n, **{f"{c}_s": common.median(s) for c, s in samples.items()},
                     "rounds_s": {c: [round(x, 6) for x in s] for c, s in samples.items()}}
            _, want = top_k(queries, rows[:n], args.k)
            _, got = faiss_top_k(queries, rows[:n], args.k)
            entry["faiss_same_ids"] = float((want == got).float().mean())
            if ivf is not None:
                _, found = ivf.pop("index").search(xq, args.k)
                ivf["recall"] = round(sum(len(set(a) & set(b)) for a, b in zip(want.tolist(), found.tolist()))
                                      / want.numel(), 3)
                ivf["build_s"] = round(ivf["build_s"], 3)
                entry["ivf"] = ivf
            per_size.append(entry)
        exact = [e["exact_s"] for e in per_size]
        built = [e for e in per_size if "faiss+build_s" in e]
        results[str(nq)] = {
            "sizes": per_size,
            "crossover": crossover(sizes, exact, [e["faiss_s"] for e in per_size]),
            "crossover_with_build": crossover([e["rows"] for e in built], [e["exact_s"] for e in built],
                                              [e["faiss+build_s"] for e in built]) if built else None}
    common.emit({"dim": args.dim, "k": args.k, "rounds": args.rounds, "threads": args.threads,
                 "build_max_rows": args.build_max_rows, "ivf_max_rows": args.ivf_max_rows, "repeat_rows": REPEAT_ROWS,
                 "faiss": faiss.__version__, "queries": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
