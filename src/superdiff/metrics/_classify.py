"""A classifier's logits and features of many images, the inputs of
`frechet_distance`, `class_histogram` and `confident_share`."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

from ..nn._classifier import Classifier


@eqx.filter_jit
def _logits_and_features(model: Classifier, images: Array) -> tuple[Array, Array]:
    features = jax.vmap(model.features)(images)
    return jax.vmap(model.head)(features), features


def classify(
    model: Classifier, images: Float[ArrayLike, "n h w c"], batch_size: int = 500
) -> tuple[Float[np.ndarray, "n classes"], Float[np.ndarray, "n hidden"]]:
    """Logits and features of many images with pixels in $[-1, 1]$, computed
    `batch_size` at a time (the last chunk padded, so one compilation serves all).
    **Returns:** NumPy arrays `(logits, features)`."""
    array = np.asarray(images)
    n = array.shape[0]
    if n == 0:
        raise ValueError("`classify` got no images.")
    size = min(batch_size, n)
    logits, features = [], []
    for start in range(0, n, size):
        chunk = array[start : start + size]
        pad = size - chunk.shape[0]
        if pad:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
        lg, ft = _logits_and_features(model, jnp.asarray(chunk))
        logits.append(np.asarray(lg)[: size - pad])
        features.append(np.asarray(ft)[: size - pad])
    return np.concatenate(logits), np.concatenate(features)
