"""Plotly figures of a run's Shapley values, shared by the Shapley page and the HTML report
(`valuation.report`): one copy of each chart, so the page and the report draw the same thing; and
`colors`, the one colour per name that every chart of the dashboard uses (`pages.ui` hands it on).

Every builder takes a `Valuation` (valuation.values) and returns a plotly Figure; none shows it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import plotly.express as px
import plotly.graph_objects as go

if TYPE_CHECKING:
    from .values import Valuation

PALETTE = px.colors.qualitative.Plotly


def colors(names: tuple[str, ...]) -> dict[str, str]:
    """One fixed colour per name, so a source or an objective looks the same in every chart."""
    return {name: PALETTE[k % len(PALETTE)] for k, name in enumerate(names)}


def bars_figure(valuation: Valuation, objectives: list[str]) -> go.Figure:
    """Each source's Shapley value, one bar per objective, with its interval as error bars."""
    return px.bar(valuation.values_frame().query("objective in @objectives"), x="player", y="value", color="objective",
                  barmode="group", error_y="plus", error_y_minus="minus", color_discrete_map=colors(valuation.objectives),
                  labels={"player": "source", "value": "Shapley value"})


def scatter_figure(valuation: Valuation, x: str, y: str) -> go.Figure:
    """Each source as a point: its value on objective x against its value on y, both with intervals."""
    figure = px.scatter(valuation.objective_pair_frame(x, y), x=x, y=y, text="player", color="player",
                        error_x=f"{x}_plus", error_x_minus=f"{x}_minus", error_y=f"{y}_plus",
                        error_y_minus=f"{y}_minus", color_discrete_map=colors(valuation.players))
    figure.add_hline(y=0, line_dash="dot", line_color="grey")
    figure.add_vline(x=0, line_dash="dot", line_color="grey")
    return figure.update_traces(textposition="top center", marker_size=12)
