"""Score networks: Equinox modules acting on one example, called as `(t, x)`."""

import math
from collections.abc import Callable

import einops
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._sde import AbstractSDE


def channels_last_conv(
    conv: eqx.nn.Conv2d, x: Float[Array, "c_in h w"]
) -> Float[Array, "c_out h2 w2"]:
    """`conv(x)` for a zero-padded `eqx.nn.Conv2d`, with the same parameters and
    result, computed as a channels-last (NHWC) convolution.

    XLA:CPU runs channels-first convolutions inside a loop, such as the
    `diffeqsolve` of a sampler, with a generic kernel about 6× slower than the one
    it uses outside a loop (jax-ml/jax#12868; measured on a 3×3 conv of 32 channels
    at 14×14 and on `UNet.mnist`); channels-last convolutions run at full speed in
    both places, and the transposes cost little."""
    if conv.padding_mode != "ZEROS":
        raise ValueError(
            f"Expected a zero-padded convolution; got padding_mode={conv.padding_mode!r}."
        )
    y = jax.lax.conv_general_dilated(
        einops.rearrange(x, "c h w -> 1 h w c"),
        einops.rearrange(conv.weight, "o i h w -> h w i o"),
        window_strides=conv.stride,
        padding=conv.padding,
        rhs_dilation=conv.dilation,
        feature_group_count=conv.groups,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    y = einops.rearrange(y, "1 h w c -> c h w")
    return y if conv.bias is None else y + conv.bias


class SinusoidalEmbedding(eqx.Module):
    """Transformer-style embedding of a scalar time (Vaswani et al. 2017; as in DDPM).

    Times in `[0, 1]` are scaled by `scale` first so that the frequencies span them.
    """

    dim: int = eqx.field(static=True)
    scale: float = 1000.0

    def __check_init__(self):
        if self.dim < 2 or self.dim % 2:
            raise ValueError(f"`dim` must be an even integer >= 2; got {self.dim}.")

    def __call__(self, t: Float[ArrayLike, ""]) -> Float[Array, " dim"]:
        half = self.dim // 2
        freqs = jnp.exp(
            -math.log(10_000.0) * jnp.arange(half, dtype=float) / max(half - 1, 1)
        )
        angles = self.scale * jnp.asarray(t, dtype=float) * freqs
        return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)])


class MLP(eqx.Module):
    """A residual MLP for low-dimensional data, conditioned on time.

    Each block adds the time embedding (through its own linear map) to the hidden
    state, applies SiLU and a linear layer, and adds a skip connection. It predicts
    the noise $\\hat\\varepsilon(t, x)$; wrap it in `EpsilonScore` for a score.
    """

    embedding: SinusoidalEmbedding
    time_mlp: eqx.nn.MLP
    input_layer: eqx.nn.Linear
    blocks: tuple[eqx.nn.Linear, ...]
    time_projections: tuple[eqx.nn.Linear, ...]
    norms: tuple[eqx.nn.LayerNorm, ...]
    output_layer: eqx.nn.Linear
    data_dim: int = eqx.field(static=True)

    def __init__(
        self,
        data_dim: int,
        width: int = 128,
        depth: int = 3,
        time_dim: int = 32,
        *,
        key: PRNGKeyArray,
    ):
        if data_dim < 1 or width < 1 or depth < 1:
            raise ValueError(
                "`data_dim`, `width` and `depth` must be positive; got "
                f"{data_dim}, {width}, {depth}."
            )
        keys = jax.random.split(key, 3 + 2 * depth)
        self.data_dim = data_dim
        self.embedding = SinusoidalEmbedding(time_dim)
        self.time_mlp = eqx.nn.MLP(
            time_dim, width, width, depth=1, activation=jax.nn.silu, key=keys[0]
        )
        self.input_layer = eqx.nn.Linear(data_dim, width, key=keys[1])
        self.blocks = tuple(
            eqx.nn.Linear(width, width, key=k) for k in keys[3 : 3 + depth]
        )
        self.time_projections = tuple(
            eqx.nn.Linear(width, width, key=k) for k in keys[3 + depth :]
        )
        self.norms = tuple(eqx.nn.LayerNorm(width) for _ in range(depth))
        self.output_layer = eqx.nn.Linear(width, data_dim, key=keys[2])

    def __call__(
        self, t: Float[ArrayLike, ""], x: Float[Array, " d"]
    ) -> Float[Array, " d"]:
        if x.shape != (self.data_dim,):
            raise ValueError(
                f"MLP acts on one example of shape ({self.data_dim},) (vmap for "
                f"batches); got shape {x.shape}."
            )
        temb = self.time_mlp(self.embedding(t))
        h = self.input_layer(x)
        for block, proj, norm in zip(
            self.blocks, self.time_projections, self.norms, strict=True
        ):
            h = h + block(jax.nn.silu(norm(h) + proj(temb)))
        return self.output_layer(jax.nn.silu(h))


class EpsilonScore(eqx.Module):
    """The score of a noise-prediction network: $\\nabla\\log q_t(x) =
    -\\hat\\varepsilon(t, x) / \\sigma_t$.

    **Arguments:**

    - `network`: any callable `(t, x) -> ε̂` on one example (an `MLP`, a UNet, ...).
    - `sde`: the schedule it was trained under.
    """

    network: Callable[[Array, Array], Array]
    sde: AbstractSDE

    def __call__(
        self, t: Float[ArrayLike, ""], x: Float[Array, "*d"]
    ) -> Float[Array, "*d"]:
        return -self.network(jnp.asarray(t), x) / self.sde.sigma(t)
