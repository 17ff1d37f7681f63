"""Search results as a ranked text table and as a self-contained HTML page with thumbnails.

A page holds one `Section` per query: the query itself (its text, or its image), the MaxSim rerank, and,
when given, what the first stage handed the rerank. Equal scores are marked as ties; their order (by key)
comes from `qdrant.ordered`, so two runs give the same page.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .qdrant import Hit, tied

THUMBNAIL = 220


@dataclass
class Section:
    title: str
    hits: Sequence[Hit]  # the MaxSim rerank, best first
    query_text: str | None = None
    query_image: str | Path | None = None
    first_stage: Sequence[Hit] = field(default_factory=list)  # the first stage's candidates, best first
    first_stage_name: str = ""  # "rows_cols", "mean"


def table(hits: Sequence[Hit]) -> str:
    ties = tied(hits)
    lines = [f"{'rank':>4}  {'score':>9}  {'':3}  {'kind':<14} source"]
    for rank, hit in enumerate(hits, 1):
        mark = "tie" if rank - 1 in ties else ""
        source = hit.payload.get("source", hit.id)
        lines.append(f"{rank:>4}  {hit.score:>9.3f}  {mark:3}  {hit.payload.get('kind', ''):<14} {source}")
    if ties:
        lines.append("(tie: the same score as another hit; ties are ordered by key)")
    return "\n".join(lines)


def _thumbnail(source: str) -> str:
    try:
        from PIL import Image

        with Image.open(source) as img:
            img.thumbnail((THUMBNAIL, THUMBNAIL))
            buffer = io.BytesIO()
            img.convert("RGB").save(buffer, "JPEG", quality=85)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
    except Exception:
        return ""


def _cards(hits: Sequence[Hit], label: str) -> list[str]:
    ties = tied(hits)
    cards = []
    for rank, hit in enumerate(hits, 1):
        source = str(hit.payload.get("source", hit.id))
        thumb = _thumbnail(source)
        image = f"<img src='{thumb}' alt=''>" if thumb else ""
        tie = " <span class='tie'>tie</span>" if rank - 1 in ties else ""
        cards.append(
            f"<div class='hit'>{image}<br><b>#{rank}</b> {label} {hit.score:.4f}{tie}<br>"
            f"{html.escape(str(hit.payload.get('kind', '')))}<br>{html.escape(str(hit.payload.get('key', '')))}"
            f"<br>{html.escape(Path(source).name)}</div>"
        )
    return cards


def _section(section: Section | tuple) -> Section:
    """A Section, or the older tuple form (title, hits) / (title, hits, query image path)."""
    if isinstance(section, Section):
        return section
    title, hits, *query = section
    return Section(title, hits, query_image=query[0] if query else None)


def write_html(path: str | Path, sections: Sequence[Section | tuple], note: str = "") -> Path:
    """One block per query: the query (text or image), then the first stage's candidates if given, then the
    MaxSim rerank, as thumbnail cards. Images are inlined, so the page stands alone."""
    parts = [
        "<!doctype html><meta charset='utf-8'><title>ColQwen2 search</title>",
        "<style>body{font-family:sans-serif;margin:2em}.hits{display:flex;flex-wrap:wrap;gap:12px}"
        ".hit{width:230px;border:1px solid #ddd;padding:6px;font-size:12px}.hit img{max-width:220px}"
        ".note{background:#fff4e0;padding:8px}.query{border:2px solid #2a6fdb;background:#eef4ff}"
        ".tie{background:#ffe08a;padding:0 3px}h3{font-size:14px;margin:12px 0 4px}</style>",
        "<h1>ColQwen2 search</h1>",
    ]
    if note:
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    for item in map(_section, sections):
        parts.append(f"<h2>{html.escape(item.title)}</h2><div class='hits'>")
        if item.query_image:
            thumb = _thumbnail(str(item.query_image))
            image = f"<img src='{thumb}' alt=''>" if thumb else ""
            name = html.escape(Path(item.query_image).name)
            parts.append(f"<div class='hit query'>{image}<br><b>query image</b><br>{name}</div>")
        if item.query_text is not None:
            parts.append(f"<div class='hit query'><b>query text</b><br>{html.escape(item.query_text)}</div>")
        parts.append("</div>")
        if item.first_stage:
            stage = html.escape(item.first_stage_name or "first stage")
            parts.append(
                f"<h3>Stage 1: {stage} candidates (top {len(item.first_stage)}, by their first-stage score)</h3>"
                "<div class='hits'>"
            )
            parts += _cards(item.first_stage, "score")
            parts.append("</div>")
        parts.append(f"<h3>{'Stage 2: ' if item.first_stage else ''}MaxSim rerank (top {len(item.hits)})</h3>")
        parts.append("<div class='hits'>")
        parts += _cards(item.hits, "MaxSim")
        parts.append("</div>")
        if tied(item.hits) or tied(item.first_stage):
            parts.append("<p class='note'>tie: the same score as another result; ties are ordered by key.</p>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    return path
