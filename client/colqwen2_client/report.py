"""Search results as a ranked text table and as a self-contained HTML page with thumbnails."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path

from .qdrant import Hit

THUMBNAIL = 220


def table(hits: Sequence[Hit]) -> str:
    lines = [f"{'rank':>4}  {'score':>9}  {'kind':<14} source"]
    for rank, hit in enumerate(hits, 1):
        lines.append(
            f"{rank:>4}  {hit.score:>9.3f}  {hit.payload.get('kind', ''):<14} {hit.payload.get('source', hit.id)}"
        )
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


def write_html(path: str | Path, sections: Sequence[tuple], note: str = "") -> Path:
    """One section per query: (title, hits) or (title, hits, query image path): the query image, if any,
    then the hits as thumbnail cards. Images are inlined."""
    parts = [
        "<!doctype html><meta charset='utf-8'><title>ColQwen2 search</title>",
        "<style>body{font-family:sans-serif;margin:2em}.hits{display:flex;flex-wrap:wrap;gap:12px}"
        ".hit{width:230px;border:1px solid #ddd;padding:6px;font-size:12px}.hit img{max-width:220px}"
        ".note{background:#fff4e0;padding:8px}.query{border:2px solid #2a6fdb;background:#eef4ff}</style>",
        "<h1>ColQwen2 search</h1>",
    ]
    if note:
        parts.append(f"<p class='note'>{html.escape(note)}</p>")
    for title, hits, *query in sections:
        parts.append(f"<h2>{html.escape(title)}</h2><div class='hits'>")
        if query and query[0]:
            thumb = _thumbnail(str(query[0]))
            image = f"<img src='{thumb}' alt=''>" if thumb else ""
            parts.append(f"<div class='hit query'>{image}<br><b>query</b><br>{html.escape(Path(query[0]).name)}</div>")
        for rank, hit in enumerate(hits, 1):
            source = str(hit.payload.get("source", hit.id))
            thumb = _thumbnail(source)
            image = f"<img src='{thumb}' alt=''>" if thumb else ""
            parts.append(
                f"<div class='hit'>{image}<br><b>#{rank}</b> MaxSim {hit.score:.3f}<br>"
                f"{html.escape(str(hit.payload.get('kind', '')))}<br>{html.escape(str(hit.payload.get('key', '')))}"
                f"<br>{html.escape(Path(source).name)}</div>"
            )
        parts.append("</div>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    return path
