"""A residual MLP noise-prediction network for low-dimensional data, called on one
example as `(t, x)`, and the sinusoidal time embedding it shares with the UNet."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray


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
    the noise $\\hat\\varepsilon(t, x)$; wrap it in `superdiff.EpsilonScore` for a
    score.
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
