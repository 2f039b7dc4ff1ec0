"""`longvivit eval CHECKPOINT --report DIR`: the evaluation as a web page.

    DIR/index.html               every task's metrics (one table per task) and the retrieval
                                 gallery: per query its caption, then its top-3 clips' frame
                                 strips, the right clip in a green border
    DIR/gallery.png              the gallery as one picture (TensorBoard's eval/gallery)
    DIR/clips/clipNNNNNNNN.png   the frame strip of each clip shown (NNNNNNNN: sample index)

Plain HTML and PNG files with relative links, no script: the folder can be copied anywhere.
Every caption and path is escaped (html.escape).
"""
from __future__ import annotations

from html import escape
from pathlib import Path

import numpy as np
from PIL import Image

from longvivit.eval.gallery import Gallery, Query, render, strip_image

STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #141414; }
table.metrics { border-collapse: collapse; display: inline-table; vertical-align: top; margin: 0 1.5em 1em 0; }
table.metrics caption { font-weight: bold; text-align: left; padding-bottom: 4px; }
table.metrics th, table.metrics td { border: 1px solid #ccc; padding: 2px 8px; text-align: left; }
table.metrics td { text-align: right; font-variant-numeric: tabular-nums; }
section.query { margin: 1em 0 1.5em; }
section.query .caption { font-size: 1.1em; margin: 0.2em 0; }
.hits { display: flex; gap: 12px; flex-wrap: wrap; align-items: flex-start; }
/* a figure as a table, its caption a table caption below it: the caption is as wide as the strip */
figure { margin: 0; display: table; }
figcaption { display: table-caption; caption-side: bottom; font-size: 0.85em; margin-top: 2px; }
figure img { display: block; border: 3px solid #c8c8c8; }
figure.right img { border-color: #00aa00; }
figure.right figcaption { color: #00aa00; font-weight: bold; }
"""
SCALE = 2  # strips are shown at twice their stored size (thumbnails are small)


def cell(value) -> str:
    return f"{value:.2f}" if isinstance(value, float) else escape(str(value))


def metrics_table(line: dict) -> str:
    """One task's numbers: a two-column table, its caption the task's name."""
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{cell(v)}</td></tr>\n" for k, v in line.items()
                   if k != "task" and isinstance(v, (int, float)))
    task = escape(line["task"])
    return f'<table class="metrics" data-task="{task}"><caption>{task}</caption>\n{rows}</table>\n'


def clip_file(clip: int) -> str:
    return f"clips/clip{clip:08d}.png"


def figure(gallery: Gallery, clip: int, label: str, right: bool, kind: str = "hit") -> str:
    """One clip's strip with its label; a wrong clip's label adds its own first caption.
    kind: "hit" (one of the top clips) or "missed" (the right clip, ranked below them)."""
    h, w = strip_image(gallery.strips[clip]).shape[:2]
    found = "" if right else f'<br><span class="found">{escape(gallery.captions[clip][0])}</span>'
    return (f'<figure class="{kind} {"right" if right else "wrong"}" data-clip="{clip}">'
            f'<img src="{clip_file(clip)}" alt="clip {clip}" width="{SCALE * w}" height="{SCALE * h}">'
            f"<figcaption>{escape(label)}{found}</figcaption></figure>")


def query_section(gallery: Gallery, q: Query) -> str:
    """A query's caption, then its hits; the right clip after them when it is not one."""
    figures = [figure(gallery, hit.clip, f"#{i + 1} · {hit.score:.2f} · clip {hit.clip}" + " (right)" * hit.correct,
                      hit.correct) for i, hit in enumerate(q.hits)]
    if not any(hit.correct for hit in q.hits):
        figures.append(figure(gallery, q.clip, f"#{q.rank} · clip {q.clip} (right)", True, "missed"))
    return (f'<section class="query" data-clip="{q.clip}">\n<p class="caption">{escape(gallery.caption(q))}</p>\n'
            f'<p class="rank">right clip (clip {q.clip}): #{q.rank} of {gallery.clips}</p>\n'
            '<div class="hits">\n' + "\n".join(figures) + "\n</div>\n</section>\n")


def gallery_html(gallery: Gallery | None) -> str:
    if gallery is None:
        return ('<p class="no-gallery">No gallery: --gallery 0, or the split\'s batches carry no caption '
                'strings (data.source=synthetic).</p>\n')
    intro = (f'<p>The first caption of each of the first {len(gallery.queries)} clips as a text-to-video '
             f'query, its top {len(gallery.queries[0].hits)} clips by similarity ({gallery.clips} clips), '
             'each a strip of frames from its start to its end. <a href="gallery.png">As one picture</a> '
             '(TensorBoard: eval/gallery).</p>\n')
    return intro + "".join(query_section(gallery, q) for q in gallery.queries)


def page(lines: list[dict], gallery: Gallery | None, info: dict) -> str:
    title = escape(f"longvivit eval: {info.get('checkpoint', '')}")
    facts = " · ".join(f"{escape(k)}: <code>{escape(str(v))}</code>" for k, v in info.items())
    tables = "".join(metrics_table(line) for line in lines)
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n<h1>Retrieval report</h1>\n<p>{facts}</p>\n"
            f"<h2>Metrics</h2>\n{tables}<h2>Gallery</h2>\n{gallery_html(gallery)}</body>\n</html>\n")


def save_png(image: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def write_report(out: str | Path, lines: list[dict], gallery: Gallery | None, info: dict) -> Path:
    """DIR/index.html and its pictures (module docstring); returns the page's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if gallery is not None:
        save_png(render(gallery), out / "gallery.png")
        for clip, strip in gallery.strips.items():
            save_png(strip_image(strip), out / clip_file(clip))
    index = out / "index.html"
    index.write_text(page(lines, gallery, info), encoding="utf-8")
    return index
