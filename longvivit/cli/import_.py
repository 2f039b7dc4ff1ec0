"""`longvivit import FORMAT ANNOTATIONS --videos DIR --out MANIFEST.jsonl`: a public
dataset's annotation file -> a manifest (longvivit/data/prepare/importers.py, whose
docstring, the --help text, lists the formats).

The last line of stdout is a JSON summary (written, missing, uncaptioned, out,
missing_list). Exit 0 when at least one row was written, 1 when none was, 2 on bad input
(an unknown format, an annotation file missing, a folder, not UTF-8 or not in its format's
shape, down to one entry's field; an unknown split; no --videos folder; an --out that is a
folder, under a file or where no folder can be made): one line on stderr naming the file
(and the entry), and nothing is created.
"""
from __future__ import annotations

import argparse
import json
import sys

from longvivit.config import ArgumentParser
from longvivit.data.prepare import importers
from longvivit.data.prepare.importers import FORMATS, UNITS, AnnotationError, import_annotations


def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser(prog="longvivit import", description=importers.__doc__,
                       epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("format", choices=list(FORMATS), metavar="FORMAT", help=", ".join(FORMATS))
    p.add_argument("annotations", help="the dataset's annotation file (JSON or CSV)")
    p.add_argument("--videos", required=True, help="folder holding the downloaded videos")
    p.add_argument("--out", required=True, help="manifest to write (.jsonl)")
    p.add_argument("--split", help="keep only this split, as the annotation file names it")
    p.add_argument("--unit", choices=list(UNITS), help="youcook2: a row per segment (default) "
                   "or per video with the paragraph of its sentences")
    p.add_argument("--answers", help="egoschema: the answers file (subset_answers.json)")
    a = p.parse_args(argv)
    try:
        summary = import_annotations(a.format, a.annotations, a.videos, a.out, a.split, a.unit, a.answers)
    except (AnnotationError, OSError) as err:
        print(f"longvivit import: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0 if summary["written"] else 1
