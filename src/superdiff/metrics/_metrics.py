"""Sample-quality metrics: distances between point clouds and feature sets, and
summaries of a classifier's predictions."""

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float


def _mean_distance(a: Array, b: Array, chunk: int = 1024) -> Array:
    """Mean Euclidean distance over all pairs, in chunks of rows to bound memory."""
    total = jnp.zeros((), a.dtype)
    for start in range(0, a.shape[0], chunk):
        block = a[start : start + chunk]
        diff = block[:, None, :] - b[None, :, :]
        total = total + jnp.sum(jnp.sqrt(jnp.sum(diff**2, axis=-1) + 1e-30))
    return total / (a.shape[0] * b.shape[0])


def energy_distance(x: Float[Array, "n d"], y: Float[Array, "m d"]) -> Float[Array, ""]:
    """The (squared) energy distance $2E\\lVert X - Y\\rVert - E\\lVert X - X'\\rVert
    - E\\lVert Y - Y'\\rVert$ (Székely & Rizzo 2013), V-statistic form; zero iff the
    laws agree."""
    x, y = jnp.asarray(x), jnp.asarray(y)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"Expected two batches of points (n, d) and (m, d); got {x.shape} and "
            f"{y.shape}."
        )
    return 2 * _mean_distance(x, y) - _mean_distance(x, x) - _mean_distance(y, y)


def nearest_share(
    samples: Float[Array, "n d"],
    first: Float[Array, "k d"],
    second: Float[Array, "m d"],
) -> Float[Array, ""]:
    """The share of `samples` whose nearest point of `first ∪ second` lies in
    `first` (e.g. the share of samples nearer the upper moon's data)."""

    def nearest(points):
        d2 = jax.vmap(lambda s: jnp.min(jnp.sum((points - s) ** 2, axis=1)))(samples)
        return d2

    return jnp.mean(nearest(first) < nearest(second))


def frechet_distance(x: Float[ArrayLike, "n f"], y: Float[ArrayLike, "m f"]) -> float:
    """The Fréchet distance between Gaussians fitted to two sets of features (see
    `gaussian_frechet_distance`), the FID formula (Heusel et al. 2017) in any
    feature space.

    The estimate is biased upwards at small sample sizes: compare only distances
    computed from equally many samples (e.g. with a train-vs-test floor).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            f"Expected two batches of features (n, f) and (m, f); got {x.shape} and "
            f"{y.shape}."
        )
    if x.shape[0] < 2 or y.shape[0] < 2:
        raise ValueError(
            f"Need at least 2 samples in each set; got {x.shape[0]} and {y.shape[0]}."
        )
    return gaussian_frechet_distance(
        x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    )


def gaussian_frechet_distance(
    mu_x: Float[ArrayLike, " f"],
    cov_x: Float[ArrayLike, "f f"],
    mu_y: Float[ArrayLike, " f"],
    cov_y: Float[ArrayLike, "f f"],
) -> float:
    """The Fréchet (2-Wasserstein) distance squared between $N(\\mu_x, \\Sigma_x)$
    and $N(\\mu_y, \\Sigma_y)$, $\\lVert\\mu_x - \\mu_y\\rVert^2 +
    \\operatorname{tr}\\big(\\Sigma_x + \\Sigma_y -
    2(\\Sigma_x^{1/2}\\Sigma_y\\Sigma_x^{1/2})^{1/2}\\big)$. Computed in float64
    with NumPy; the matrix square root by symmetric eigendecompositions, so it is
    exact for positive-semidefinite covariances (no `sqrtm` of a non-symmetric
    product)."""
    mu_x, mu_y = np.asarray(mu_x, np.float64), np.asarray(mu_y, np.float64)
    cov_x, cov_y = np.asarray(cov_x, np.float64), np.asarray(cov_y, np.float64)
    f = mu_x.shape[0] if mu_x.ndim == 1 else -1
    if not (mu_x.shape == mu_y.shape == (f,) and cov_x.shape == cov_y.shape == (f, f)):
        raise ValueError(
            "Expected means (f,) and covariances (f, f) of one dimension f; got "
            f"{mu_x.shape}, {cov_x.shape}, {mu_y.shape} and {cov_y.shape}."
        )
    root_x = _psd_sqrt(cov_x)
    cross = np.sum(
        np.sqrt(np.clip(np.linalg.eigvalsh(root_x @ cov_y @ root_x), 0, None))
    )
    return float(
        np.sum((mu_x - mu_y) ** 2) + np.trace(cov_x) + np.trace(cov_y) - 2 * cross
    )


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((cov + cov.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def class_histogram(
    logits: Float[ArrayLike, "n classes"],
) -> Float[np.ndarray, " classes"]:
    """The share of examples predicted as each class (argmax of the logits)."""
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"Expected logits (n, classes); got shape {logits.shape}.")
    counts = np.bincount(np.argmax(logits, axis=1), minlength=logits.shape[1])
    return counts / logits.shape[0]


def confident_share(
    logits: Float[ArrayLike, "n classes"], threshold: float = 0.9
) -> float:
    """The share of examples whose top predicted class probability is at least
    `threshold`: a rough sharpness score (blurred or ambiguous digits fall below)."""
    if not 0 < threshold < 1:
        raise ValueError(f"`threshold` must be in (0, 1); got {threshold}.")
    logits = np.asarray(logits, np.float64)
    if logits.ndim != 2:
        raise ValueError(f"Expected logits (n, classes); got shape {logits.shape}.")
    shifted = logits - logits.max(axis=1, keepdims=True)
    top = 1 / np.exp(shifted).sum(axis=1)  # softmax probability of the argmax
    return float(np.mean(top >= threshold))
