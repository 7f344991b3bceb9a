"""The layer figures, from each run's layers.parquet: the paper's Figure 7 (the std of each layer's response)
and the gradient norm across depth."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from bench.report.drawing import add_caption, default_title, depth_colors, legend_below, net_line, style
from bench.report.styles import line_key
from bench.results.prose import provenance_lines


def figure7(profile: pd.DataFrame, runs: pd.DataFrame, *, colors: dict[int, tuple] | None = None,
            title: str | None = None) -> Figure:
    """The paper's Figure 7: the std of each 3x3 layer's response (BN output, before ReLU and addition) in
    network order (left) and sorted by magnitude (right), plain (dashed) and residual (solid) nets of every
    depth overlaid. `profile` is `tables.layer_profile(layers, "response_std")`."""
    colors = colors or depth_colors(profile["depth"])
    with style():
        fig = Figure(figsize=(12, 4.6))
        axes = fig.subplots(1, 2, sharey=True)
        for (arch, depth), net in profile.sort_values("layer").groupby(["arch", "depth"]):
            values = net["value"].to_numpy()
            x = np.arange(1, len(values) + 1)
            net_line(axes[0], x, values, arch, depth, colors[depth], f"{arch}-{depth}-layer")
            net_line(axes[1], x, np.sort(values)[::-1], arch, depth, colors[depth], f"{arch}-{depth}-sorted")
        for ax, xlabel in zip(axes, ("layer index (original)", "layer index (sorted by magnitude)")):
            ax.set_xlabel(xlabel)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0].set_ylabel("std of the layer's response")
        axes[0].set_ylim(bottom=0)
        legend_below(axes[1], columns=3)
        iterations = ", ".join(f"{i:,}" for i in sorted({int(i) for i in profile["iteration"]}))
        add_caption(fig, [*provenance_lines(runs),
                          f"Responses: each 3x3 layer's BatchNorm output before ReLU and addition, eval mode, at each "
                          f"run's last measurement (iteration {iterations}), over 1,000 test images spread over the "
                          f"split (`bench analyze`: the whole split); mean over seeds. {line_key(runs)}"],
                    title=title or default_title(runs, "Std of layer responses (Figure 7)"))
    return fig


def gradient_figure(first: pd.DataFrame, last: pd.DataFrame, runs: pd.DataFrame, *,
                    colors: dict[int, tuple] | None = None, title: str | None = None) -> Figure:
    """The L2 norm of each conv weight's gradient across depth, at the first iteration (left) and at the last
    measurement (right), log scale. `first`/`last` are `tables.layer_profile(layers, "grad_norm", ...)`."""
    colors = colors or depth_colors(pd.concat([first["depth"], last["depth"]]))
    with style():
        fig = Figure(figsize=(12, 4.6))
        axes = fig.subplots(1, 2, sharey=True)
        for ax, profile, when in zip(axes, (first, last), ("first", "last")):
            for (arch, depth), net in profile.sort_values("layer").groupby(["arch", "depth"]):
                net_line(ax, net["layer"].to_numpy(), net["value"].to_numpy(), arch, depth, colors[depth],
                          f"{arch}-{depth}-grad-{when}")
            moments = sorted({int(i) for i in profile["iteration"]})
            ax.set_title(f"{'first iteration' if when == 'first' else 'last measurement'} "
                         f"(iteration {', '.join(f'{m:,}' for m in moments)})", fontsize=11)
            ax.set_xlabel("conv layer (network order, input to output)")
            ax.set_yscale("log")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0].set_ylabel("gradient norm of the conv weight")
        legend_below(axes[1], columns=3)
        add_caption(fig, [*provenance_lines(runs),
                          "Gradient: L2 norm of each main-path conv weight's gradient after backward, before the "
                          f"optimizer step; mean over seeds. {line_key(runs)}"],
                    title=title or default_title(runs, "Gradient norm across depth"))
    return fig
