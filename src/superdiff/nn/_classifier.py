"""A small image classifier for evaluating generated digits without Inception.

Its penultimate activations are the feature space of the Fréchet distance
(Heusel et al. 2017) that `superdiff.metrics.frechet_distance` computes, in the way
FID uses Inception-v3's pool features; its predictions give the class histogram and
the share of confident predictions of generated samples (`superdiff.metrics`:
`classify`, `class_histogram`, `confident_share`).
"""

from collections.abc import Sequence

import einops
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ._conv import channels_last_conv


class Classifier(eqx.Module):
    """A convolutional classifier of one channels-last image `(H, W, C)`.

    Three 3×3 convolutions with ReLU, the first two each followed by 2×2 max
    pooling (28 → 14 → 7 for MNIST), then a hidden layer of `hidden` units (the
    **features**) and a linear layer to the class logits, with dropout before it
    when called with a `key`. The MNIST default (`channels=(32, 64, 64)`,
    `hidden=128`) has 458,570 parameters and reaches 99% test accuracy within a
    few epochs (measured in `experiments/split_mnist.py`).

    **Arguments:**

    - `image_shape`: `(H, W, C)`, with `H` and `W` divisible by 4.
    - `num_classes`: the number of classes.
    - `channels`: the three convolutions' output channels.
    - `hidden`: the size of the feature layer.
    - `dropout`: the dropout rate on the features during training.
    - `key`: for the initialisation.
    """

    convs: tuple[eqx.nn.Conv2d, eqx.nn.Conv2d, eqx.nn.Conv2d]
    hidden_layer: eqx.nn.Linear
    head: eqx.nn.Linear
    image_shape: tuple[int, int, int] = eqx.field(static=True)
    dropout: float = eqx.field(static=True)

    def __init__(
        self,
        image_shape: Sequence[int] = (28, 28, 1),
        num_classes: int = 10,
        channels: Sequence[int] = (32, 64, 64),
        hidden: int = 128,
        dropout: float = 0.3,
        *,
        key: PRNGKeyArray,
    ):
        shape = tuple(int(s) for s in image_shape)
        if len(shape) != 3 or shape[0] % 4 or shape[1] % 4:
            raise ValueError(
                "`image_shape` must be (H, W, C) with H and W divisible by 4; got "
                f"{tuple(image_shape)}."
            )
        if len(channels) != 3:
            raise ValueError(f"`channels` must have 3 entries; got {tuple(channels)}.")
        if not 0 <= dropout < 1:
            raise ValueError(f"`dropout` must be in [0, 1); got {dropout}.")
        h, w, c = shape
        keys = jax.random.split(key, 5)
        widths = (c, *channels)
        self.convs = tuple(  # pyright: ignore[reportAttributeAccessIssue]
            eqx.nn.Conv2d(widths[i], widths[i + 1], 3, padding=1, key=keys[i])
            for i in range(3)
        )
        flat = channels[-1] * (h // 4) * (w // 4)
        self.hidden_layer = eqx.nn.Linear(flat, hidden, key=keys[3])
        self.head = eqx.nn.Linear(hidden, num_classes, key=keys[4])
        self.image_shape = shape  # pyright: ignore[reportAttributeAccessIssue]
        self.dropout = dropout

    def features(self, x: Float[Array, "h w c"]) -> Float[Array, " hidden"]:
        """The penultimate activations of one image with pixels in $[-1, 1]$."""
        if x.shape != self.image_shape:
            raise ValueError(
                f"Classifier acts on one channels-last image of shape "
                f"{self.image_shape} (vmap for batches); got shape {x.shape}."
            )
        # Convolutions need one dtype: compute in the parameters'.
        dtype = self.convs[0].weight.dtype
        h = einops.rearrange(x.astype(dtype), "h w c -> c h w")
        for i, conv in enumerate(self.convs):
            h = jax.nn.relu(channels_last_conv(conv, h))
            if i < 2:
                h = einops.reduce(h, "c (h 2) (w 2) -> c h w", "max")
        return jax.nn.relu(self.hidden_layer(jnp.ravel(h)))

    def __call__(
        self, x: Float[Array, "h w c"], *, key: PRNGKeyArray | None = None
    ) -> Float[Array, " classes"]:
        """The class logits of one image; `key` turns dropout on (training)."""
        features = self.features(x)
        if key is not None and self.dropout > 0:
            keep = jax.random.bernoulli(key, 1 - self.dropout, features.shape)
            features = jnp.where(keep, features / (1 - self.dropout), 0)
        return self.head(features)
