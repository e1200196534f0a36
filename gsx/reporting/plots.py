"""PNG plots for the evaluation report: feature density, L0 distribution, per-token reconstruction error.

Each plot is drawn from the histograms in the report's `eval.distributions`
section, so the picture and the JSON always show the same bins. Files are
written atomically with matplotlib's Agg renderer, without pyplot.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gsx.io import atomic_path

logger = logging.getLogger(__name__)

PLOT_NAMES = ("feature_density", "l0", "reconstruction_error")
"""Keys of the report's `plots` section, one PNG each."""


def _figure():
    # A Figure with its own Agg canvas leaves pyplot's global state and the user's backend alone.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _bar_histogram(ax: Any, edges: list[float], counts: list[int]) -> None:
    widths = [b - a for a, b in zip(edges[:-1], edges[1:])]
    ax.bar(edges[:-1], counts, width=widths, align="edge", color="#4c72b0", edgecolor="white", linewidth=0.4)


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def plot_feature_density(distributions: dict[str, Any], path: Path) -> Path:
    """Plot the histogram of log10 firing frequency of the latents that fired; the title gives the dead count."""
    density = distributions["feature_density"]
    fig, ax = _figure()
    _bar_histogram(ax, density["histogram"]["edges"], density["histogram"]["counts"])
    ax.set_xlabel("log10 firing frequency (fraction of evaluated tokens)")
    ax.set_ylabel("latents")
    ax.set_title(f"Feature density (dead latents, not shown: {density['n_dead']})")
    return _save(fig, path)


def plot_l0(distributions: dict[str, Any], l0_mean: float, path: Path) -> Path:
    """Plot the histogram of active latents per token, with the mean marked."""
    histogram = distributions["l0"]["histogram"]
    fig, ax = _figure()
    _bar_histogram(ax, histogram["edges"], histogram["counts"])
    ax.axvline(l0_mean, color="#c44e52", linestyle="--", label=f"mean {l0_mean:.1f}")
    ax.set_xlabel("L0 (active latents per token)")
    ax.set_ylabel("tokens")
    ax.set_title("L0 distribution")
    ax.legend()
    return _save(fig, path)


def plot_reconstruction_error(distributions: dict[str, Any], mse: float, path: Path) -> Path:
    """Plot the histogram of log10 ‖x − x̂‖² per token, with log10 MSE marked."""
    import math

    error = distributions["squared_error"]
    histogram = error["log10_histogram"]
    fig, ax = _figure()
    if histogram["edges"]:
        _bar_histogram(ax, histogram["edges"], histogram["counts"])
    if mse > 0:
        ax.axvline(math.log10(mse), color="#c44e52", linestyle="--", label=f"MSE {mse:.4g}")
        ax.legend()
    ax.set_xlabel("log10 squared error ‖x − x̂‖² per token")
    ax.set_ylabel("tokens")
    zero = f" ({error['n_zero']} tokens with zero error not shown)" if error["n_zero"] else ""
    ax.set_title("Reconstruction error per token" + zero)
    return _save(fig, path)


def write_plots(folder: Path, stem: str, distributions: dict[str, Any], reconstruction: dict[str, Any]) -> dict[str, str]:
    """Write `<stem>_<name>.png` for each of `PLOT_NAMES` into `folder`; return name → file name."""
    folder = Path(folder)
    paths = {
        "feature_density": plot_feature_density(distributions, folder / f"{stem}_feature_density.png"),
        "l0": plot_l0(distributions, float(reconstruction["l0"]), folder / f"{stem}_l0.png"),
        "reconstruction_error": plot_reconstruction_error(
            distributions, float(reconstruction["mse"]), folder / f"{stem}_reconstruction_error.png"
        ),
    }
    return {name: path.name for name, path in paths.items()}
