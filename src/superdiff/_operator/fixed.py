"""Operators with fixed weights: one model alone, or a fixed average."""

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from .base import AbstractOperator, per_model


def _weights(value) -> Array | None:
    return per_model(
        value,
        "`weights`",
        lambda w: jnp.all(jnp.isfinite(w)) & (jnp.abs(jnp.sum(w) - 1) < 1e-6),
        "`weights` must be finite and sum to one; got {got}.",
    )


class Single(AbstractOperator):
    r"""One model alone: $\kappa = e_i$. Off the tracked path only its network runs."""

    index: int = eqx.field(static=True, default=0)
    needs_density: ClassVar[bool] = False

    def __call__(self, inputs):
        return jax.nn.one_hot(self.index, inputs.num_models, dtype=inputs.scores.dtype)

    def mixed_score(self, family):
        return family.member(self.index)

    def check(self, num_models, estimator=None):
        if not 0 <= self.index < num_models:
            raise ValueError(
                f"`Single(index={self.index})` needs 0 <= index < {num_models} "
                f"(the number of models)."
            )


class Average(AbstractOperator):
    r"""Fixed weights (the averaging baseline): $\kappa = w$, uniform by default."""

    # An array, not a static tuple: a sweep over the weights compiles once.
    weights: Float[Array, " M"] | None = eqx.field(default=None, converter=_weights)
    needs_density: ClassVar[bool] = False

    def __call__(self, inputs):
        num = inputs.num_models
        if self.weights is None:
            return jnp.full((num,), 1.0 / num, dtype=inputs.scores.dtype)
        return self.weights.astype(inputs.scores.dtype)

    def check(self, num_models, estimator=None):
        if self.weights is not None and len(self.weights) != num_models:
            raise ValueError(
                f"`Average` has {len(self.weights)} weights for {num_models} models."
            )
