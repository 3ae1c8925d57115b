"""Training curves: <run>/curves.png redrawn from the log's rows after every epoch, and optional TensorBoard
scalars (`--tensorboard`, in <run>/tensorboard/).

The PNG has one panel per logged quantity against the epoch: training loss, training accuracy, learning rate
and margin (both at the epoch's last step), validation EER (%) and minDCF at the first p_target. It is
drawn on matplotlib's Agg canvas (a `Figure`, no pyplot state, no display) and written atomically, so a viewer
refreshing the file never sees half an image. TensorBoard gets the same scalars, one event file per epoch
(TensorBoard merges the files of a folder), so nothing stays open between epochs and a resumed run appends.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from metrics import P_TARGETS
from utils import UserError, atomic_path

# (log.csv column, panel title, scale applied to the value); the order of the panels
PANELS = (("loss", "training loss", 1.0), ("accuracy", "training accuracy", 1.0), ("lr", "learning rate", 1.0),
          ("margin", "margin", 1.0), ("val_eer", "validation EER (%)", 100.0),
          ("val_min_dcf", f"validation minDCF (p_target {P_TARGETS[0]:g})", 1.0))
TENSORBOARD_INSTALL = "pip install tensorboard"


def check_tensorboard() -> None:
    """--tensorboard needs the tensorboard package (torch.utils.tensorboard writes through it)."""
    if importlib.util.find_spec("tensorboard") is None:
        raise UserError(f"--tensorboard needs the tensorboard package, which is not installed: "
                        f"{TENSORBOARD_INSTALL} (or drop --tensorboard; curves.png is written anyway)")


def series(rows: Sequence[dict], column: str, scale: float = 1.0) -> tuple[list[int], list[float]]:
    """(epochs, values) of one log column, skipping epochs where it is empty (no validation list)."""
    points = [(int(r["epoch"]), scale * float(r[column])) for r in rows if str(r.get(column, "")).strip()]
    return [e for e, _ in points], [v for _, v in points]


def plot_curves(rows: Sequence[dict], path: Path, title: str = "") -> None:
    """The log's curves as a 2 x 3 grid of panels, written atomically as PNG."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(11, 6))
    for i, (column, name, scale) in enumerate(PANELS):
        ax = fig.add_subplot(2, 3, i + 1)
        epochs, values = series(rows, column, scale)
        if values:
            ax.plot(epochs, values, marker="o", markersize=3, linewidth=1.2)
        else:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="0.5")
        ax.set(title=name, xlabel="epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.grid(True, color="0.9")
    if title:
        fig.suptitle(title)
    # fixed margins: tight_layout measured every label's extent and took ~2/3 of the drawing time
    fig.subplots_adjust(left=0.07, right=0.985, bottom=0.08, top=0.9, wspace=0.4, hspace=0.45)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        fig.savefig(f, format="png", dpi=100)


def write_tensorboard(rows: Sequence[dict], folder: Path) -> None:
    """The last row's scalars as TensorBoard events (tags train/loss, train/accuracy, train/lr, train/margin,
    val/eer, val/min_dcf; step = epoch)."""
    from torch.utils.tensorboard import SummaryWriter

    row = rows[-1]
    writer = SummaryWriter(log_dir=str(folder))
    try:
        for column, _, _ in PANELS:
            if str(row.get(column, "")).strip():
                tag = f"val/{column[4:]}" if column.startswith("val_") else f"train/{column}"
                writer.add_scalar(tag, float(row[column]), int(row["epoch"]))
    finally:
        writer.close()


def write_curves(run: Path, rows: Sequence[dict], tensorboard: bool = False) -> None:
    """After an epoch: <run>/curves.png from all rows so far; with `tensorboard`, the newest row's scalars."""
    if not rows:
        return
    plot_curves(rows, run / "curves.png", title=run.name)
    if tensorboard:  # checked at the start too (config.parse_args); here for a resumed run's saved setting
        check_tensorboard()
        write_tensorboard(rows, run / "tensorboard")
