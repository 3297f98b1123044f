"""The markup of the report: small helpers that escape every piece of text they are given, the charts
embedded as fragments, and the page shell with its style and its Content-Security-Policy."""

from __future__ import annotations

import html
from dataclasses import dataclass
from typing import Any

import pandas as pd

CHART_HEIGHT = "440px"
CHART_CONFIG = {"displaylogo": False, "responsive": True}
# The browser itself refuses every request: inline scripts and styles only (plotly.js needs eval).
CSP = ("default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
       "img-src data: blob:; font-src data:")

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 0;
       color: #1f2430; background: #fff; line-height: 1.5; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { margin-bottom: 4px; } h2 { border-bottom: 1px solid #d8dbe2; padding-bottom: 4px; margin-top: 40px; }
nav a { margin-right: 14px; }
table { border-collapse: collapse; width: 100%; margin: 12px 0; font-size: 14px; }
th, td { border: 1px solid #d8dbe2; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f3f4f7; }
td { white-space: pre-wrap; }
pre { background: #f3f4f7; padding: 10px 12px; overflow-x: auto; white-space: pre-wrap; font-size: 13px; }
.caveat, ul.caveats li { color: #7a4b00; }
ul.caveats { background: #fff7e6; border: 1px solid #f1d39b; padding: 10px 10px 10px 32px; }
.chart { margin: 12px 0; }
.meta { color: #5b6172; }
"""


def esc(value: object) -> str:
    """Any value as text that is safe inside an element or an attribute."""
    return html.escape(str(value), quote=True)


def paragraph(text: str, kind: str = "") -> str:
    """A paragraph, of CSS class `kind` when given (e.g. 'caveat')."""
    return f'<p class="{esc(kind)}">{esc(text)}</p>' if kind else f"<p>{esc(text)}</p>"


def bullets(items: list[str], kind: str = "") -> str:
    """A bulleted list, of CSS class `kind` ('caveats' draws it as a warning box)."""
    return f'<ul class="{esc(kind)}">' + "".join(f"<li>{esc(item)}</li>" for item in items) + "</ul>"


def code_block(lines: list[str]) -> str:
    """Lines of commands, one a line, to copy as they are."""
    return "<pre><code>" + esc("\n".join(lines)) + "</code></pre>"


def table(header: list[str], rows: list[list[object]]) -> str:
    """A plain table: one header row, then one row per list."""
    head = "".join(f"<th>{esc(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def section(anchor: str, title: str, parts: list[str]) -> str:
    """A titled section that the navigation bar links to by `anchor`."""
    return f'<section id="{esc(anchor)}"><h2>{esc(title)}</h2>{"".join(parts)}</section>'


def subheading(title: str) -> str:
    return f"<h3>{esc(title)}</h3>"


def with_interval(value: float, lower: float, upper: float, spec: str = "+.3f") -> str:
    """'0.110 [0.064, 0.151]'; a value without an interval says so instead of standing alone."""
    if pd.isna(lower) or pd.isna(upper):
        return f"{value:{spec}} (no interval)"
    return f"{value:{spec}} [{lower:{spec}}, {upper:{spec}}]"


@dataclass
class Charts:
    """Embeds figures as fragments: plotly.js goes in with the first one only."""

    count: int = 0

    def embed(self, figure: Any) -> str:
        """The figure as a chart fragment, in the Shapley page's margins."""
        import plotly.io as pio

        figure.update_layout(margin=dict(t=40, b=10))
        fragment = pio.to_html(figure, full_html=False, include_plotlyjs=self.count == 0, include_mathjax=False,
                               config=CHART_CONFIG, default_height=CHART_HEIGHT)
        self.count += 1
        return f'<div class="chart">{fragment}</div>'


def page(title: str, nav: tuple[tuple[str, str], ...], body: list[str]) -> str:
    """The whole document: the CSP and the style in its head, a link per (anchor, label) of `nav`, the body."""
    links = "".join(f'<a href="#{anchor}">{esc(label)}</a>' for anchor, label in nav)
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{esc(CSP)}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body><main>"
            f"<h1>{esc(title)}</h1><nav>{links}</nav>{''.join(body)}</main></body></html>\n")
