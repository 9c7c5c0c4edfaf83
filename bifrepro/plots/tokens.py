"""Token attribution figures in the poster's style, as PNG (matplotlib) and as an HTML page.

A panel shows a query sentence with the attributed token highlighted, and under it the top training
sequences with every token's background coloured by its score against the query token (red =
helpful / positively correlated, blue = negative; the diverging house colour map). Text is laid
out in a monospace font so that token boxes line up without measuring glyphs.
"""

from __future__ import annotations

import html
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field

import matplotlib as mpl
import numpy as np
from matplotlib.figure import Figure

from bifrepro.plots.style import DIVERGING_CMAP, house_style

__all__ = ["TokenRow", "TokenPanel", "plot_token_panels", "token_panels_html"]

_CHAR_WIDTH = 0.6  # advance of DejaVu Sans Mono, in units of the font size
_FONT_SIZE = 9.0
_LINE_HEIGHT_IN = 0.24
_DARK = 0.6  # |score| / vmax above which a token box is dark enough for white text


@dataclass
class TokenRow:
    """One training sequence: its tokens (decoded text pieces) and their scores."""

    label: str
    tokens: list[str]
    scores: np.ndarray


@dataclass
class TokenPanel:
    """A query sentence, the index of the attributed token, and the top training rows."""

    title: str
    query_tokens: list[str]
    focus: int
    rows: list[TokenRow] = field(default_factory=list)


def _wrap(tokens: Sequence[str], width: int) -> list[list[tuple[int, str]]]:
    """Greedy wrapping of tokens into lines of at most ``width`` characters."""
    lines: list[list[tuple[int, str]]] = [[]]
    used = 0
    for i, tok in enumerate(tokens):
        t = tok.replace("\n", " ")
        if used + len(t) > width and lines[-1]:
            lines.append([])
            used = 0
            t = t.lstrip(" ") or t
        lines[-1].append((i, t))
        used += len(t)
    return lines


def _vmax(panels: Sequence[TokenPanel]) -> float:
    vals = [np.abs(np.nan_to_num(r.scores)).max() for p in panels for r in p.rows if len(r.scores)]
    v = float(max(vals)) if vals else 1.0
    return v if v > 0 else 1.0


def plot_token_panels(
    panels: Sequence[TokenPanel],
    title: str,
    score_label: str = "correlation with the query token",
    width_chars: int = 110,
    vmax: float | None = None,
) -> Figure:
    """One figure with every panel stacked: query (focus boxed in yellow), then coloured rows."""
    cmap = mpl.colormaps[DIVERGING_CMAP]
    vmax = vmax or _vmax(panels)
    norm = mpl.colors.Normalize(-vmax, vmax)
    # layout in "lines": title, then per panel: header, query lines, gap, per row header + lines
    items: list[tuple[str, object]] = []
    for p in panels:
        # bold and larger than the token text: wrapped well inside the token width
        items.extend(("header", line) for line in textwrap.wrap(p.title, int(width_chars * 0.8)))
        items.extend(("query", (p, line)) for line in _wrap(p.query_tokens, width_chars))
        items.append(("gap", None))
        for row in p.rows:
            items.append(("rowlabel", row.label))
            items.extend(("row", (row, line)) for line in _wrap(row.tokens, width_chars))
        items.append(("gap", None))
    title_lines = title.count("\n") + 1.8
    n_lines = len(items) + title_lines + 2.5
    char_w_pt = _CHAR_WIDTH * _FONT_SIZE
    width_in = (width_chars + 2) * char_w_pt / 72.0
    with house_style():
        fig = Figure(figsize=(width_in, n_lines * _LINE_HEIGHT_IN))
        ax = fig.add_axes((0.0, 2.5 / n_lines, 1.0, len(items) / n_lines))
        ax.set_axis_off()
        ax.set_xlim(-1, width_chars + 1)
        ax.set_ylim(len(items) - 0.5, -0.5)
        fig.suptitle(title, fontsize=10, y=1.0 - 0.3 / n_lines, va="top")
        mono = {"family": "DejaVu Sans Mono", "size": _FONT_SIZE}
        for y, (kind, payload) in enumerate(items):
            if kind == "header":
                ax.text(0, y, str(payload), fontsize=9.5, fontweight="bold", va="center")
            elif kind == "rowlabel":
                ax.text(0, y, str(payload), fontsize=8, color="#444444", va="center")
            elif kind in ("query", "row"):
                obj, line = payload  # type: ignore[misc]
                x = 0
                for i, tok in line:
                    lead = len(tok) - len(tok.lstrip(" "))
                    body = tok.strip(" ")
                    if body:
                        if kind == "query":
                            focus = i == obj.focus
                            box = {
                                "facecolor": "#ffe45c" if focus else "none",
                                "edgecolor": "#b8860b" if focus else "none",
                                "boxstyle": "square,pad=0.15",
                            }
                        else:
                            s = float(np.nan_to_num(obj.scores[i]))
                            rgba = cmap(norm(s))
                            box = {
                                "facecolor": rgba,
                                "edgecolor": "none",
                                "boxstyle": "square,pad=0.15",
                            }
                        dark = kind == "row" and abs(s) > _DARK * vmax
                        ax.text(
                            x + lead, y, body, fontdict=mono, va="center", ha="left", bbox=box,
                            color="white" if dark else "black",
                        )  # fmt: skip
                    x += len(tok)
        cax = fig.add_axes((0.3, 0.6 / n_lines, 0.4, 0.6 / n_lines))
        sm = mpl.cm.ScalarMappable(norm=norm, cmap=cmap)
        cb = fig.colorbar(sm, cax=cax, orientation="horizontal")
        cb.set_label(f"{score_label}  (red = helpful, blue = harmful)", fontsize=8)
        cb.ax.tick_params(labelsize=7)
    return fig


def _css_color(score: float, vmax: float) -> str:
    """CSS ``background`` (and white text on dark backgrounds) for a score."""
    cmap = mpl.colormaps[DIVERGING_CMAP]
    x = max(-1.0, min(1.0, score / vmax))
    r, g, b, _ = cmap(0.5 + 0.5 * x)
    text = ";color:white" if abs(x) > _DARK else ""
    return f"rgb({int(255 * r)},{int(255 * g)},{int(255 * b)}){text}"


def token_panels_html(
    sections: Sequence[tuple[str, Sequence[TokenPanel]]],
    title: str,
    intro: str = "",
    score_label: str = "correlation with the query token",
    vmax: float | None = None,
) -> str:
    """A self-contained HTML page: per section, the query and its coloured training sequences.

    Hovering a token shows its score. ``sections`` is a list of ``(heading, panels)``.
    """
    all_panels = [p for _, ps in sections for p in ps]
    vmax = vmax or _vmax(all_panels)
    esc = html.escape
    out = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        f"<title>{esc(title)}</title><style>",
        "body{font-family:sans-serif;max-width:70em;margin:2em auto;color:#222}",
        ".seq{font-family:'DejaVu Sans Mono',monospace;white-space:pre-wrap;line-height:1.9;"
        "margin:.2em 0 .8em 0}",
        ".tok{padding:1px 0;border-radius:2px}",
        ".focus{background:#ffe45c;outline:2px solid #b8860b}",
        ".label{color:#555;font-size:.85em}",
        "</style></head><body>",
        f"<h1>{esc(title)}</h1>",
    ]
    if intro:
        out.append(f"<p>{esc(intro)}</p>")
    out.append(
        f"<p class='label'>Colour: {esc(score_label)}, scale ±{vmax:.3g} "
        "(red = helpful, blue = harmful). Hover a token for its score.</p>"
    )
    for heading, panels in sections:
        out.append(f"<h2>{esc(heading)}</h2>")
        for p in panels:
            query = "".join(
                f"<span class='{'tok focus' if i == p.focus else 'tok'}'>{esc(tok)}</span>"
                for i, tok in enumerate(p.query_tokens)
            )
            out.append(f"<h3>{esc(p.title)}</h3><div class='seq'>{query}</div>")
            for row in p.rows:
                spans = []
                for tok, s in zip(row.tokens, row.scores, strict=True):
                    s = float(s)
                    if not tok.strip() or not math.isfinite(s):
                        spans.append(esc(tok))
                        continue
                    lead = tok[: len(tok) - len(tok.lstrip(" "))]
                    spans.append(
                        f"{lead}<span class='tok' style='background:{_css_color(s, vmax)}' "
                        f"title='{s:+.3f}'>{esc(tok.strip(' '))}</span>"
                    )
                out.append(
                    f"<div class='label'>{esc(row.label)}</div><div class='seq'>{''.join(spans)}</div>"
                )
    out.append("</body></html>")
    return "\n".join(out)
