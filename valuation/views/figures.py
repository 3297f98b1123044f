"""Every chart of the dashboard and the report, built here once: a page or the report only shows
what a builder returns. `colors` gives each source or objective its one colour in every chart.

The values' charts (bars, scatter, waterfall, interactions, bands) take a `Valuation`
(`games.values`); the others take the tables their pages read. Builders return plotly Figures and
never show them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from plotly.colors import hex_to_rgb

from ..games.axioms import number

if TYPE_CHECKING:
    from ..games.values import Valuation
    from .lesson import Lattice

PALETTE = px.colors.qualitative.Plotly


def colors(names: Sequence[str]) -> dict[str, str]:
    """One fixed colour per name, so a source or an objective looks the same in every chart."""
    return {name: PALETTE[k % len(PALETTE)] for k, name in enumerate(names)}


def _translucent(color: str, alpha: float = 0.2) -> str:
    return f"rgba{(*hex_to_rgb(color), alpha)}"


# -----------------------------------------------------------------------------
# the values


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


def waterfall_figure(start: float, steps: Sequence[tuple[str, float]], objective: str) -> go.Figure:
    """From v(∅), one step per (label, amount), to v(N): a source's Shapley value, or its marginal
    contribution in one join order; either way the steps land on v(N)."""
    amounts = [amount for _, amount in steps]
    return go.Figure(go.Waterfall(
        x=["v(∅)", *(label for label, _ in steps), "v(N)"],
        measure=["absolute", *["relative"] * len(steps), "total"],
        y=[start, *amounts, 0],
        text=[number(start), *(f"{amount:+.3g}" for amount in amounts), number(start + sum(amounts))],
    )).update_layout(yaxis_title=objective, showlegend=False)


def values_waterfall(valuation: Valuation, objective: str) -> go.Figure:
    """From v(∅), one step per source's value, to v(N): efficiency makes the steps land exactly."""
    k = valuation.objectives.index(objective)
    start = float(valuation.efficiency_frame().set_index("objective").loc[objective, "v_empty"])
    return waterfall_figure(start, list(zip(valuation.players, valuation.shapley.values[:, k])), objective)


def interaction_figure(valuation: Valuation, objective: str) -> go.Figure:
    return px.imshow(valuation.interaction_frame(objective), color_continuous_scale="RdBu",
                     color_continuous_midpoint=0, text_auto=".3f", labels={"color": "interaction"})


def banded_figure(trace: pd.DataFrame, players: Sequence[str], x: str, **line) -> go.Figure:
    """One line per player of `value` against column `x`, in a band from `lower` to `upper` (where known)."""
    figure = go.Figure()
    for player, color in colors(players).items():
        rows = trace[trace.player == player]
        known = rows.dropna(subset=["lower", "upper"])
        figure.add_scatter(x=pd.concat([known[x], known[x][::-1]]), y=pd.concat([known.upper, known.lower[::-1]]),
                           fill="toself", fillcolor=_translucent(color), line_width=0, mode="lines",
                           hoverinfo="skip", showlegend=False, legendgroup=player)
        figure.add_scatter(x=rows[x], y=rows.value, name=player, line_color=color, legendgroup=player, **line)
    return figure


def convergence_figure(valuation: Valuation, objective: str) -> go.Figure:
    """Running Monte Carlo estimate per source against permutations used, with a band of +- one standard error."""
    trace = valuation.shapley.convergence_frame().query("objective == @objective").dropna(subset="stderr")
    trace = trace.assign(lower=trace.value - trace.stderr, upper=trace.value + trace.stderr)
    return banded_figure(trace, valuation.players, "permutations").update_layout(
        xaxis_title="permutations", yaxis_title=f"{objective} Shapley value")


def prompts_figure(trace: pd.DataFrame, players: Sequence[str], objective: str) -> go.Figure:
    """Each source's value on the first k prompts against k, in a band of its interval."""
    return banded_figure(trace[trace.objective == objective], players, "prompts", mode="lines+markers").update_layout(
        xaxis_title="prompts finished", yaxis_title=f"{objective} Shapley value")


def ess_figure(estimation: pd.DataFrame) -> go.Figure:
    """Each coalition's mean effective sample size per prompt, coloured by how it was estimated."""
    return px.bar(estimation, x="coalition", y="ess_mean", color="estimator", hover_data=["ess_min"],
                  labels={"ess_mean": "mean ESS per prompt"})


def targets_figure(values: pd.DataFrame, objective: str) -> go.Figure:
    """Each source's value on one objective under each target (`games.values.values_by_target`)."""
    return px.bar(values, x="player", y="value", color="target", barmode="group", error_y="plus",
                  error_y_minus="minus", labels={"player": "source", "value": f"Shapley value, {objective}"})


# -----------------------------------------------------------------------------
# the sources and the training


def lengths_figure(lengths: pd.DataFrame) -> go.Figure:
    """Word counts of prompts, chosen and rejected replies per source (`data.sources.pair_lengths`)."""
    lengths = lengths.melt(id_vars="source", var_name="text", value_name="words")
    lengths["text"] = lengths["text"].str.removesuffix("_words")
    figure = px.histogram(lengths, x="words", color="source", facet_col="text", barmode="overlay", nbins=60,
                          histnorm="percent", range_x=[0, lengths.words.quantile(0.98)], opacity=0.6)
    return figure.update_layout(height=340)


def curve_figure(curves: pd.DataFrame, y: str, title: str) -> go.Figure:
    """One training curve per source (`training.progress.training_curves`) against the step."""
    return px.line(curves, x="step", y=y, color="source", title=title)


# -----------------------------------------------------------------------------
# the audit


def audit_figure(audit: pd.DataFrame, threshold: float) -> go.Figure:
    """How the other sources' margin spreads over a source's pairs: those below the threshold, the
    flagged ones, in red, and the threshold as a dotted line."""
    shown = audit.assign(pairs=np.where(audit.rest_margin < threshold, "flagged", "kept"))
    figure = px.histogram(shown, x="rest_margin", color="pairs", nbins=40,
                          color_discrete_map={"flagged": "#d62728", "kept": "#7f7f7f"},
                          labels={"rest_margin": "the other sources' margin on the pair (chosen − rejected)"})
    return figure.add_vline(x=threshold, line_dash="dot")


# -----------------------------------------------------------------------------
# the validation


def method_values_figure(values: pd.DataFrame) -> go.Figure:
    """Shapley values by how the coalitions were built (arithmetic, sequential, pooled), per objective."""
    return px.bar(values, x="player", y="value", color="method", barmode="group",
                  facet_col="objective").update_yaxes(matches=None)


def kl_figure(curve: pd.DataFrame) -> go.Figure:
    """Per-token KL between arithmetic and sequential DPO, both directions, against epochs."""
    long = curve.melt("epochs", ["kl_reference_model", "kl_model_reference"], var_name="direction",
                      value_name="KL per token")
    return px.line(long, x="epochs", y="KL per token", color="direction", markers=True)


def intervals_figure(values: pd.DataFrame, color: str | None = None) -> go.Figure:
    """Values with their intervals as error bars, one panel per objective (bars side by side by `color`)."""
    return px.bar(values, x="player", y="value", error_y=values.upper - values.value, color=color, barmode="group",
                  error_y_minus=values.value - values.lower, facet_col="objective",
                  facet_col_spacing=0.06).update_yaxes(matches=None,
                                                                                                showticklabels=True)


def retrain_scatter_figure(coalitions: pd.DataFrame) -> go.Figure:
    """Each coalition's utility by a shortcut (arithmetic, merged) against retraining it, per objective,
    with the diagonal where the shortcut would be exact."""
    long = coalitions.melt(["coalition", "size", "objective", "retrained"], ["arithmetic", "merged"],
                           var_name="shortcut", value_name="utility by the shortcut")
    figure = px.scatter(long, x="retrained", y="utility by the shortcut", color="shortcut", symbol="shortcut",
                        hover_data=["coalition", "size"], facet_col="objective", facet_col_spacing=0.06,
                        labels={"retrained": "retrained"})  # one short title per panel: four fit side by side
    figure.update_xaxes(matches=None).update_yaxes(matches=None, showticklabels=True)
    for column, (_, group) in enumerate(coalitions.groupby("objective", sort=False), start=1):
        low, high = group[["retrained", "arithmetic", "merged"]].min().min(), group[["retrained", "arithmetic", "merged"]].max().max()
        figure.add_shape(type="line", x0=low, y0=low, x1=high, y1=high, line={"dash": "dot", "color": "grey"},
                         row=1, col=column)
    return figure


def scaling_figure(scaling: pd.DataFrame) -> go.Figure:
    """Monte Carlo error against exact Shapley by budget, per sampling scheme."""
    return px.line(scaling, x="permutations", y="rmse", color="sampling", markers=True, log_x=True, log_y=True,
                   labels={"rmse": "RMSE against exact"})


# -----------------------------------------------------------------------------
# the lesson


def _segments(edges: pd.DataFrame) -> tuple[list, list]:
    """x and y of many line segments as one trace, separated by None."""
    xs = [c for e in edges.itertuples() for c in (e.x0, e.x1, None)]
    ys = [c for e in edges.itertuples() for c in (e.y0, e.y1, None)]
    return xs, ys


def lattice_figure(graph: Lattice, objective: str, players: Sequence[str], path: pd.DataFrame) -> go.Figure:
    """Coalitions as dots by size, coloured by utility; a line per added source, in that source's colour,
    labelled with its marginal contribution; the join order (`path`, a walkthrough) as a thick dark path."""
    figure = go.Figure()
    on_path = graph.edges.set_index(["source", "target"]).index.isin(list(zip(path.before, path.after)))
    xs, ys = _segments(graph.edges[on_path])
    figure.add_scatter(x=xs, y=ys, mode="lines", line=dict(color="black", width=5), opacity=0.35,
                       hoverinfo="skip", name="join order (step 2)")
    for k, (player, color) in enumerate(colors(players).items()):
        edges = graph.edges[graph.edges.added == player]
        xs, ys = _segments(edges)
        figure.add_scatter(x=xs, y=ys, mode="lines", line=dict(color=color, width=1.5), opacity=0.6,
                           hoverinfo="skip", name=f"adds {player}", legendgroup=player)
        # labels sit at a different point along the line for each source, so crossing lines keep theirs apart
        t = 0.3 + 0.4 * k / max(len(players) - 1, 1)
        figure.add_scatter(
            x=(1 - t) * edges.x0 + t * edges.x1, y=(1 - t) * edges.y0 + t * edges.y1,
            mode="text" if graph.labelled else "markers", text=[f"{m:+.3g}" for m in edges.marginal],
            textfont=dict(size=11, color=color), marker=dict(size=8, opacity=0), showlegend=False,
            legendgroup=player, customdata=edges.source.replace("", "∅"),
            hovertemplate=f"adding {player} to %{{customdata}}: %{{text}}<extra></extra>")
    nodes = graph.nodes
    figure.add_scatter(
        x=nodes.x, y=nodes.y, mode="markers+text" if graph.labelled else "markers", text=nodes.label,
        textposition="top center", customdata=nodes.utility, showlegend=False,
        marker=dict(size=18 if graph.labelled else 9, color=nodes.utility, colorscale="Viridis", showscale=True,
                    colorbar=dict(title=objective, x=1.0, xanchor="left", len=0.6, y=0, yanchor="bottom"),
                    line=dict(color="white", width=1)),
        hovertemplate="%{text}<br>v = %{customdata:.4g}<extra></extra>")
    n = int(nodes["size"].max())
    return figure.update_layout(
        height=140 * (n + 1) + 60, xaxis=dict(visible=False), legend=dict(y=1, yanchor="top"),
        yaxis=dict(title="coalition size |S|", tickvals=list(range(n + 1)), zeroline=False))


def simulation_figure(trace: pd.DataFrame, players: Sequence[str], objective: str) -> go.Figure:
    """Running Monte Carlo estimates (`lesson.simulate`) in a 95% band, each exact value a dotted line
    of the same colour."""
    rows = trace.dropna(subset="stderr")
    band = rows.assign(value=rows.estimate, lower=rows.estimate - 1.96 * rows.stderr,
                       upper=rows.estimate + 1.96 * rows.stderr)
    figure = banded_figure(band, players, "permutations")
    for player, color in colors(players).items():
        figure.add_hline(y=rows[rows.player == player].exact.iloc[0], line_dash="dot", line_color=color)
    return figure.update_layout(xaxis_title="permutations sampled", yaxis_title=f"{objective} Shapley value")


def cost_figure(n: int) -> go.Figure:
    """Fine-tunings needed against the number of sources: one model per coalition, or one adapter per source."""
    sizes = np.arange(1, max(n, 12) + 1)
    frame = pd.DataFrame({"sources": np.concatenate([sizes, sizes]),
                          "fine-tunings": np.concatenate([2 ** sizes - 1, sizes]),
                          "approach": ["one model per coalition"] * len(sizes) + ["one adapter per source"] * len(sizes)})
    figure = px.line(frame, x="sources", y="fine-tunings", color="approach", markers=True, log_y=True)
    figure.update_yaxes(dtick=1)  # one tick per power of ten
    return figure.add_vline(x=n, line_dash="dot", line_color="grey", annotation_text=f"this game: n = {n}")
