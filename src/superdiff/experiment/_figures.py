"""Sample grids for the image experiments (split MNIST, split CIFAR-10): grey or
colour images tiled into one picture, drawn without pyplot's global state so that
training threads can save them."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from jaxtyping import ArrayLike, Float
from matplotlib.figure import Figure


def tile(
    images: Float[ArrayLike, "n h w c"], columns: int, border: int = 1
) -> Float[np.ndarray, "H W c"]:
    """Images with pixels in $[-1, 1]$, `(n, h, w, c)`, tiled `columns` wide with
    `border` pixels of white between them, as one array in $[0, 1]$; missing
    tiles of the last row are white."""
    array = np.clip(np.asarray(images, dtype=np.float32), -1, 1)
    if array.ndim != 4 or array.shape[0] == 0:
        raise ValueError(
            f"`images` must be a non-empty batch (n, h, w, c); got shape {array.shape}."
        )
    n, h, w, c = array.shape
    rows = -(-n // columns)
    step_h, step_w = h + border, w + border
    canvas = np.ones((rows * step_h + border, columns * step_w + border, c))
    for i, image in enumerate(array):
        r, col = divmod(i, columns)
        y, x = border + step_h * r, border + step_w * col
        canvas[y : y + h, x : x + w] = (image + 1) / 2
    return canvas


def save_grid(
    images: Float[ArrayLike, "n h w c"],
    path: str | Path,
    columns: int = 8,
    title: str | None = None,
) -> None:
    """Save images with pixels in $[-1, 1]$, `(n, h, w, 1)` (grey) or
    `(n, h, w, 3)` (colour), tiled `columns` wide, as one PNG (its folder is
    created). Uses no pyplot state, so it may be called from several threads."""
    canvas = tile(images, columns)
    rows = -(-np.asarray(images).shape[0] // columns)
    fig = Figure(figsize=(columns * 0.5, rows * 0.5 + 0.3 * bool(title)))
    ax = fig.subplots()
    if canvas.shape[-1] == 1:
        ax.imshow(canvas[..., 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(canvas)
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def plot_training_grids(
    out: Path, names: Sequence[str], columns: int = 4, dpi: int = 100
) -> None:
    """Side by side, the periodic sample grids `fit` wrote for each model in
    `out/grids/<name>/step_*.png`: up to `columns` evenly spaced training steps, the
    last one included. Written to `out/training_grids.png`; nothing if no grids."""
    import matplotlib.pyplot as plt

    paths = {n: sorted((out / "grids" / n).glob("step_*.png")) for n in names}
    names = [n for n in names if paths[n]]
    if not names:
        return
    width = min(columns, max(len(paths[n]) for n in names))
    fig, axes = plt.subplots(
        len(names), width, figsize=(3.4 * width, 1.6 * len(names)), squeeze=False
    )
    for row, name in zip(axes, names, strict=True):
        chosen = np.linspace(0, len(paths[name]) - 1, min(width, len(paths[name])))
        for ax in row:
            ax.set_axis_off()
        for ax, i in zip(row, np.unique(chosen.round().astype(int)), strict=False):
            ax.imshow(plt.imread(paths[name][i]))
    fig.tight_layout()
    fig.savefig(out / "training_grids.png", dpi=dpi)
    plt.close(fig)
