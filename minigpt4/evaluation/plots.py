"""PNG plots of an evaluation run: the confusion matrix, the mean modality weights per class and
the reliability diagram of the confidence.

Drawn on matplotlib's Agg canvas directly (`Figure` + `FigureCanvasAgg`), so importing this
module never changes the global pyplot backend and works without a display. Each file is
written to a temp file in the target folder and renamed into place.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from minigpt4.common.atomic_io import atomic_open

PathLike = Union[str, Path]


def _save_png(fig: Figure, path: PathLike, dpi: int = 120) -> Path:
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=dpi, bbox_inches="tight")
    return path


def _cell_text_color(value: float, vmax: float) -> str:
    return "white" if vmax > 0 and value > 0.6 * vmax else "black"


def plot_confusion_matrix(
    matrix: Sequence[Sequence[float]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    path: PathLike,
    title: str = "Confusion matrix",
    normalize: bool = True,
) -> Path:
    """Heatmap of `matrix [rows = gold, cols = predicted]`, counts written in each cell.

    With `normalize`, colours are row-normalised (recall per gold class) so small classes stay
    readable; the cell text shows `count` and the row share. Returns the PNG path.
    """
    cm = np.asarray(matrix, dtype=float)
    if cm.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"confusion matrix of shape {cm.shape} does not fit {len(row_labels)} rows x "
                         f"{len(col_labels)} columns")
    rows = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    colour = share if normalize else cm
    vmax = 1.0 if normalize else max(float(cm.max()), 1.0)
    size = (1.2 + 0.85 * len(col_labels), 1.0 + 0.75 * len(row_labels))
    fig = Figure(figsize=size)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(colour, cmap="Blues", vmin=0.0, vmax=vmax, aspect="auto")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of gold class" if normalize else "clips")
    ax.set_xticks(range(len(col_labels)), labels=list(col_labels), rotation=45, ha="right")
    ax.set_yticks(range(len(row_labels)), labels=list(row_labels))
    ax.set_xlabel("predicted")
    ax.set_ylabel("gold")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            text = f"{int(cm[i, j])}" + (f"\n{share[i, j]:.0%}" if normalize and rows[i, 0] > 0 else "")
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color=_cell_text_color(colour[i, j], vmax))
    return _save_png(fig, path)


def plot_modality_weights(
    per_class: Mapping[str, Optional[Mapping[str, float]]],
    experts: Sequence[str],
    path: PathLike,
    title: str = "Mean modality weight per gold class",
) -> Path:
    """Heatmap: one row per class (classes without clips left out), one column per expert.

    `per_class` maps class -> {expert: mean weight} or None (as `metrics.mean_modality_weights`
    returns it; an `all` row, when present, is drawn last). Returns the PNG path.
    """
    rows = [c for c, w in per_class.items() if w is not None]
    if not rows:
        raise ValueError("no class has modality weights to plot")
    data = np.array([[float(per_class[c][e]) for e in experts] for c in rows])  # type: ignore[index]
    vmax = max(float(data.max()), 1e-6)
    fig = Figure(figsize=(1.6 + 0.95 * len(experts), 1.0 + 0.55 * len(rows)))
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(data, cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="mean attention weight")
    ax.set_xticks(range(len(experts)), labels=list(experts), rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), labels=rows)
    ax.set_xlabel("expert")
    ax.set_ylabel("gold class")
    ax.set_title(title)
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if data[i, j] > 0.6 * vmax else "white")
    return _save_png(fig, path)


def plot_reliability(
    bins: Sequence[Mapping[str, Optional[float]]],
    path: PathLike,
    title: str = "Reliability diagram",
    ece: Optional[float] = None,
) -> Path:
    """Reliability diagram: accuracy per confidence bin against the diagonal of perfect calibration,
    with the clip count per bin underneath (rows as `calibration.reliability_bins` returns them)."""
    lo = np.array([float(b["lo"]) for b in bins])
    hi = np.array([float(b["hi"]) for b in bins])
    n = np.array([int(b["n"]) for b in bins])
    acc = np.array([np.nan if b["accuracy"] is None else float(b["accuracy"]) for b in bins])
    conf = np.array([np.nan if b["confidence"] is None else float(b["confidence"]) for b in bins])
    fig = Figure(figsize=(4.6, 5.6))
    ax, ax_n = fig.add_subplot(2, 1, 1), fig.add_subplot(2, 1, 2)
    fig.subplots_adjust(hspace=0.35)
    width = hi - lo
    ax.bar(lo, np.nan_to_num(acc), width=width, align="edge", edgecolor="black", color="#4c72b0", label="accuracy")
    ax.bar(lo, np.nan_to_num(conf - acc), bottom=np.nan_to_num(acc), width=width, align="edge",
           color="#dd8452", alpha=0.45, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfectly calibrated")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(title + ("" if ece is None else f" (ECE {ece:.3f})"))
    ax.legend(loc="upper left", fontsize=7)
    ax_n.bar(lo, n, width=width, align="edge", edgecolor="black", color="#8c8c8c")
    ax_n.set_xlim(0, 1)
    ax_n.set_xlabel("confidence")
    ax_n.set_ylabel("clips")
    return _save_png(fig, path)
