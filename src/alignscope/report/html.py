"""A self-contained HTML report: sections of provenance, tables, figures (embedded) and sample excerpts."""

from __future__ import annotations

import base64
import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]]
    caption: str = ""


@dataclass
class Figure:
    path: Path
    caption: str = ""


@dataclass
class AudioClip:
    """One playable clip: ``path`` is linked relative to the report (the WAV stays in the run directory)."""

    path: Path
    label: str = ""
    text: str = ""


@dataclass
class AudioRow:
    """A row of audio players side by side (e.g. clean, adversarial and defended versions of one prompt)."""

    title: str
    clips: list[AudioClip]
    caption: str = ""


@dataclass
class Section:
    """One part of a report.

    ``provenance`` names what produced every number in the section (model, suite, judge, decoding settings);
    the template prints it above the section's tables, as DESIGN.md asks.
    """

    title: str
    intro: str = ""
    provenance: dict[str, Any] = field(default_factory=dict)
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    examples: list[dict[str, str]] = field(default_factory=list)
    audio: list[AudioRow] = field(default_factory=list)


@dataclass
class Report:
    title: str
    meta: dict[str, Any]
    sections: list[Section]
    summary: list[str] = field(default_factory=list)


_TEMPLATE = jinja2.Template(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ r.title }}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;
color:#1d1d1f;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em} th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}
th{background:#f3f3f6} caption{caption-side:top;text-align:left;font-style:italic;color:#555;padding-bottom:.3em}
.prov{background:#f7f7fa;border-left:3px solid #7a7aff;padding:.4em .8em;font-size:.88em;margin:.6em 0}
.prov span{margin-right:1.4em} figure{margin:1em 0} figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.88em;color:#555} .note{font-size:.9em;color:#444} .summary li{margin:.2em 0}
details{margin:.4em 0} pre{white-space:pre-wrap;background:#fafafa;border:1px solid #eee;padding:.5em;font-size:.85em}
.meta{color:#555;font-size:.9em} audio{width:220px;display:block} .ans{font-size:.8em;color:#444;max-width:240px}
</style></head><body>
<h1>{{ r.title }}</h1>
<div class="meta">{% for k, v in r.meta.items() %}<div><b>{{ k }}:</b> {{ v }}</div>{% endfor %}
<div><b>generated:</b> {{ now }}</div></div>
{% if r.summary %}<h2>Summary</h2><ul class="summary">{% for s in r.summary %}<li>{{ s }}</li>{% endfor %}</ul>{% endif %}
{% for s in r.sections %}
<section id="s{{ loop.index }}"><h2>{{ s.title }}</h2>
{% if s.intro %}<p>{{ s.intro }}</p>{% endif %}
{% if s.provenance %}<div class="prov">{% for k, v in s.provenance.items() %}<span><b>{{ k }}:</b> {{ v }}</span>{% endfor %}</div>{% endif %}
{% for t in s.tables %}<table>{% if t.caption %}<caption>{{ t.caption }}</caption>{% endif %}
<tr>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in t.rows %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>{% endfor %}</table>{% endfor %}
{% for f in s.figures %}<figure><img alt="{{ f.caption }}" src="data:image/png;base64,{{ f.data }}">
<figcaption>{{ f.caption }} (<a href="{{ f.rel }}">PNG</a>, <a href="{{ f.svg }}">SVG</a>)</figcaption></figure>{% endfor %}
{% if s.audio %}<table class="audio">{% for row in s.audio %}<tr><th>{{ row.title }}{% if row.caption %}<div class="ans">{{ row.caption }}</div>{% endif %}</th>
{% for c in row.clips %}<td><div>{{ c.label }}</div><audio controls preload="none" src="{{ c.rel }}"></audio>{% if c.text %}<div class="ans">{{ c.text }}</div>{% endif %}</td>{% endfor %}</tr>{% endfor %}</table>{% endif %}
{% for n in s.notes %}<p class="note">{{ n }}</p>{% endfor %}
{% if s.examples %}<details><summary>Example outputs ({{ s.examples|length }})</summary>
{% for e in s.examples %}<pre>{% for k, v in e.items() %}<b>{{ k }}:</b> {{ v }}
{% endfor %}</pre>{% endfor %}</details>{% endif %}
</section>
{% endfor %}
</body></html>
""",
    autoescape=True,
)


def render_report(report: Report, base: Path) -> str:
    """HTML text of ``report``; figures are embedded (base64) and also linked relative to ``base``."""
    sections = []
    for s in report.sections:
        figs = []
        for f in s.figures:
            p = Path(f.path)
            figs.append(
                {
                    "caption": f.caption,
                    "data": base64.b64encode(p.read_bytes()).decode("ascii"),
                    "rel": _rel(p, base),
                    "svg": _rel(p.with_suffix(".svg"), base),
                }
            )
        audio = [
            {
                "title": row.title,
                "caption": row.caption,
                "clips": [
                    {"label": c.label, "text": c.text, "rel": _rel(Path(c.path), base)} for c in row.clips
                ],
            }
            for row in s.audio
        ]
        sections.append({**s.__dict__, "figures": figs, "audio": audio})
    view = {"title": report.title, "meta": report.meta, "summary": report.summary, "sections": sections}
    now = _dt.datetime.now().isoformat(timespec="seconds")
    return _TEMPLATE.render(r=view, now=now)


def write_report(report: Report, path: Path) -> Path:
    path = Path(path)
    path.write_text(render_report(report, path.parent), encoding="utf-8")
    return path


def _rel(p: Path, base: Path) -> str:
    try:
        return str(p.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(p)
