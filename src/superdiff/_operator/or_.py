"""SuperDiff OR (Skreta et al. 2025, Prop. 3)."""

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from .._util import ensure, positive
from .base import AbstractOperator, per_model


def _temperature(value) -> Array:
    if np.ndim(value) != 0:
        raise ValueError(
            f"`Or`'s temperature must be a scalar; got shape {np.shape(value)}."
        )
    return ensure(
        value, positive, "`Or` needs a finite, positive temperature T; got T={got}."
    )


def _bias(value) -> Array | None:
    return per_model(
        value,
        "`Or`'s bias",
        lambda b: ~jnp.isnan(b) & (b < jnp.inf) & jnp.any(b > -jnp.inf),
        "`Or`'s `bias` must be finite, or -inf to turn a model off (not every "
        "model); got {got}.",
    )


class Or(AbstractOperator):
    r"""SuperDiff OR (Skreta et al. 2025, Prop. 3; `docs/math.md` §5):
    $\kappa = \mathrm{softmax}(T\log q + \ell)$.

    With `temperature=1` and `bias=log w` this samples exactly the mixture
    $\sum_i w_i q^i$ (given exact scores and log-densities); as $T\to\infty$ each
    example follows its most likely model.

    **Arguments:**

    - `temperature`: $T$, finite and positive.
    - `bias`: $\ell$, one value per model (zero by default); $-\infty$ turns a model
        off, but not every model.
    """

    # Arrays, not static floats: a sweep over T (or the bias) compiles once, and
    # `jax.vmap` over it works. Checked now where known, at run time where traced.
    temperature: Float[Array, ""] = eqx.field(default=1.0, converter=_temperature)
    bias: Float[Array, " M"] | None = eqx.field(default=None, converter=_bias)
    needs_density: ClassVar[bool] = True

    def __call__(self, inputs):
        if inputs.log_q is None:
            raise ValueError("`Or` weighs by the tracked log-densities: give `log_q`.")
        # Shift before scaling: softmax is shift-invariant, and the largest entry is
        # then exactly 0 for any T. Scaling first loses the logits to rounding once
        # |T log q| is large (T = 1e6 and log q ~ -4e3 give 4e9, whose float32 ulp
        # is 512), and under `jit` XLA fuses T log q - max(T log q) into an FMA
        # whose "zero" is then -168: every exp underflows and softmax is 0/0.
        log_q = inputs.log_q
        shifted = log_q - jnp.max(log_q)
        temperature = self.temperature.astype(shifted.dtype)
        # The largest entry stays exactly 0 for any T, an infinite one too (T =
        # 1e308 in float32): 0 · inf would be NaN. T → ∞ is the hard maximum.
        logits = jnp.where(shifted == 0, 0.0, temperature * shifted)
        if self.bias is not None:
            logits = logits + jnp.asarray(self.bias, dtype=logits.dtype)
        return jax.nn.softmax(logits)

    def check(self, num_models, estimator=None):
        if num_models < 2:
            raise ValueError(
                f"`Or` weighs several models by their densities; got {num_models} "
                "model. Sample one model with `Single()` (or no operator)."
            )
        if self.bias is not None and len(self.bias) != num_models:
            raise ValueError(
                f"`Or` has {len(self.bias)} bias values for {num_models} models."
            )
