"""`longvivit search INDEX TEXT [TEXT ...]`: the top-k videos (and moments) of an index for each text.

    longvivit search INDEX "a dog catches a frisbee" [-k 10] [--html DIR] [--model MODEL]
    longvivit search INDEX --queries FILE [-k 10] [--video ID] [--backend exact|faiss]

INDEX is a folder `longvivit embed` wrote; each text is embedded by the model it names (or
--model). Prints one JSON line per query: {"query", "videos": [{"rank", "score", "id",
"video", "start", "end"}, ...]} and, for a windowed index, "moments" (each with the window's
"start" and "end" in seconds), the same whichever --backend scores the rows (exact: a
torch matrix product; faiss: faiss's flat inner-product search, the optional extra
`search`); --html DIR writes a page of the hits as frame strips (longvivit/use/search.py).
Bad input is one line on stderr naming the argument, exit 2, before anything is written.
"""
from __future__ import annotations

import json
import sys

from longvivit.config import ArgumentParser, ConfigError
from longvivit.use.encoder import default_device, load
from longvivit.use.search import check_search_args, read_queries, search, write_page


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="longvivit search", description=__doc__.split("\n\n")[0])
    p.add_argument("index", help="a folder `longvivit embed` wrote")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="query texts")
    p.add_argument("--queries", metavar="FILE", help="more query texts, one per line")
    p.add_argument("-k", type=int, default=10, help="hits per query (default 10)")
    p.add_argument("--html", metavar="DIR", help="write DIR/index.html: the hits as frame strips")
    p.add_argument("--video", metavar="ID", help="search only this video's moments (a windowed index: one long video)")
    p.add_argument("--model", help="embed the queries with this model (default: the index's)")
    p.add_argument("--backend", default="exact", help="exact (torch matrix product, default) or faiss "
                   "(its flat inner-product search, the same hits; needs the extra: pip install 'longvivit[search]')")
    p.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: the GPU when there is one)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        queries = read_queries(args.texts, args.queries)
        idx = check_search_args(args.index, args.model, args.k, args.html, args.video, args.backend)
    except ConfigError as err:
        print(f"longvivit search: {err}".splitlines()[0], file=sys.stderr)
        return 2
    encoder, _, _ = load(args.model or idx.summary["model"], args.device or default_device())
    results = search(idx, encoder.encode_text(queries).cpu(), queries, args.k, args.video, args.backend)
    for result in results:
        print(json.dumps(result), flush=True)
    if args.html:
        write_page(args.html, idx, results, encoder)
    return 0
