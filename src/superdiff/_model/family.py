"""Families of M score models, evaluated together at one point.

A family maps one example `x` of shape `d` to the `(M, *d)` stack of its members'
scores. Models of one architecture are stacked along a leading model axis and run as
one vectorised call (`StackedScores`); any other callables `(t, x) -> score`, such as
networks of different architectures or analytic scores, run one after another
(`ScoreTuple`).
"""

import abc
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float


ScoreFn = Callable[[Any, Array], Array]


class AbstractScoreFamily(eqx.Module):
    """M score functions evaluated at one `(t, x)`."""

    @property
    @abc.abstractmethod
    def num_models(self) -> int:
        """The number of models M."""

    @abc.abstractmethod
    def __call__(
        self, t: Float[ArrayLike, ""], x: Float[Array, "*d"]
    ) -> Float[Array, "M *d"]:
        """The scores of all M models at one example."""

    @abc.abstractmethod
    def member(self, i: int) -> ScoreFn:
        """The `i`-th model alone."""

    def batched(
        self, t: Float[ArrayLike, ""], x: Float[Array, "n *d"]
    ) -> Float[Array, "n M *d"]:
        """The scores of all M models at a batch of examples."""
        return jax.vmap(lambda xi: self(t, xi))(x)

    def check(self, t: Float[ArrayLike, ""], example: Float[Array, "*d"]) -> None:
        """Check, by shape evaluation only (no computation), that the models map
        one example to floating-point scores of its shape: `(M, *d)` for the
        family. A family whose members can be told apart refines the message."""
        _check_output(self, "the stacked score models", t, example, self.num_models)


class ScoreTuple(AbstractScoreFamily):
    """Any callables `(t, x) -> score`, evaluated one after another."""

    scores: tuple[ScoreFn, ...]

    def __check_init__(self):
        if len(self.scores) == 0:
            raise ValueError("Expected at least one score model; got none.")
        for i, score in enumerate(self.scores):
            if not callable(score):
                raise TypeError(
                    f"Score model {i} must be a callable `(t, x) -> score`; got "
                    f"{type(score).__name__}."
                )

    @property
    def num_models(self) -> int:
        return len(self.scores)

    def member(self, i: int) -> ScoreFn:
        return self.scores[i]

    def __call__(self, t, x):
        return jnp.stack([_as_input_dtype(score(t, x), x) for score in self.scores])

    def check(self, t, example):
        for i, score in enumerate(self.scores):
            _check_output(score, f"score model {i}", t, example, None)


class StackedScores(AbstractScoreFamily):
    """M models of one architecture, stacked on a leading axis of their arrays and
    evaluated with one `vmap`. Build it with `StackedScores.from_models`.
    """

    stacked: Any
    static: Any = eqx.field(static=True)
    size: int = eqx.field(static=True)

    @classmethod
    def from_models(cls, models: Sequence[ScoreFn]) -> "StackedScores":
        """Stack `models`, which must share their structure and array shapes."""
        models = tuple(models)
        if len(models) == 0:
            raise ValueError("Expected at least one score model; got none.")
        parts = [eqx.partition(m, eqx.is_array) for m in models]
        arrays0, static0 = parts[0]
        if not jax.tree.leaves(arrays0):
            raise ValueError(
                "Cannot stack score models that hold no arrays (plain functions, or "
                "modules around them): there is nothing to vectorise over. Pass "
                "them as a `ScoreTuple` (or a plain list) to evaluate them one by one."
            )
        shapes0 = jax.tree.map(jnp.shape, arrays0)
        for i, (arrays, static) in enumerate(parts[1:], start=1):
            same_tree = jax.tree.structure(arrays) == jax.tree.structure(arrays0)
            if not (same_tree and eqx.tree_equal(static, static0)):
                raise ValueError(
                    f"Cannot stack score models of different architectures: model {i} "
                    "differs from model 0 in structure or configuration. Pass them "
                    "as a `ScoreTuple` (or a plain list) to evaluate them one by one."
                )
            shapes = jax.tree.map(jnp.shape, arrays)
            if shapes != shapes0:
                raise ValueError(
                    f"Cannot stack score models with mismatched parameter shapes: "
                    f"model 0 has {_shape_summary(shapes0)}, model {i} has "
                    f"{_shape_summary(shapes)}."
                )
        stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *(p[0] for p in parts))
        return cls(stacked=stacked, static=static0, size=len(models))

    @property
    def num_models(self) -> int:
        return self.size

    def _arrays(self, i: int):
        return jax.tree.map(lambda a: a[i], self.stacked)

    def member(self, i: int) -> ScoreFn:
        """The `i`-th model, unstacked."""
        return eqx.combine(self._arrays(i), self.static)

    def __call__(self, t, x):
        scores = jax.vmap(lambda arrays: eqx.combine(arrays, self.static)(t, x))(
            self.stacked
        )
        return _as_input_dtype(scores, x)

    def batched(self, t, x):
        def one_model(arrays):
            model = eqx.combine(arrays, self.static)
            return jax.vmap(lambda xi: model(t, xi))(x)

        if jax.default_backend() == "cpu":
            # XLA:CPU runs the model-batched layers (batched matmuls, vmapped norms)
            # slower than M separate calls (measured 1.5-2x on the two-moons MLP,
            # benchmarks/sampling.py), so on CPU the members run one after another,
            # sliced from the same stacked arrays.
            outs = [one_model(self._arrays(i)) for i in range(self.size)]
            return _as_input_dtype(jnp.stack(outs, axis=1), x)
        # On accelerators: one vectorised call, the model axis outermost so each
        # layer is one batched matrix product over models.
        return _as_input_dtype(jnp.moveaxis(jax.vmap(one_model)(self.stacked), 0, 1), x)


def batched(score: ScoreFn, t: Float[ArrayLike, ""], x: Float[Array, "n *d"]) -> Array:
    """A per-example score on a batch: `score.batched(t, x)` where the score has
    that method (score families and mixed scores know a faster way than `vmap`),
    else `jax.vmap` over the examples."""
    method = getattr(score, "batched", None)
    if callable(method):
        return jnp.asarray(method(t, x))
    return jax.vmap(lambda xi: score(t, xi))(x)


def _shape_summary(shapes) -> str:
    leaves = jax.tree.leaves(shapes, is_leaf=lambda s: isinstance(s, tuple))
    return (
        "["
        + ", ".join(str(s) for s in leaves[:4])
        + (", ...]" if len(leaves) > 4 else "]")
    )


def score_family(
    models: AbstractScoreFamily | ScoreFn | Sequence[ScoreFn],
) -> AbstractScoreFamily:
    """Make a family out of one model, a sequence of models, or a family.

    Equinox modules of one architecture are stacked (`StackedScores`), so that M
    networks cost one vectorised call; anything else becomes a `ScoreTuple`.
    """
    if isinstance(models, AbstractScoreFamily):
        return models
    if callable(models):
        models = (models,)
    if not isinstance(models, Sequence):
        raise TypeError(
            "`models` must be a score `(t, x) -> score`, a sequence of them, or a "
            f"score family; got {type(models).__name__}."
        )
    models = tuple(models)
    if len(models) == 0:
        raise ValueError("Expected at least one score model; got none.")
    if len(models) > 1 and all(isinstance(m, eqx.Module) for m in models):
        try:
            return StackedScores.from_models(models)
        except ValueError:
            pass
    return ScoreTuple(models)


def _as_input_dtype(scores: Array, x: Array) -> Array:
    """Scores in the dtype of the point they were evaluated at: the one dtype of a
    sampler's state (a float32 network under `jax_enable_x64`, or a bfloat16 one,
    feeds a float64 or float32 state and its tracked log-densities without mixing
    precisions). A no-op when the dtypes agree."""
    return scores.astype(x.dtype) if scores.dtype != x.dtype else scores


def _check_output(
    fn: Callable, which: str, t: Float[ArrayLike, ""], example: Array, num: int | None
) -> None:
    try:
        out = jax.eval_shape(fn, jnp.asarray(t), example)
    except Exception as err:
        raise ValueError(
            f"Evaluating {which} on one example of shape {tuple(example.shape)} "
            f"failed: {err}"
        ) from err
    expected = example.shape if num is None else (num, *example.shape)
    if not hasattr(out, "shape") or out.shape != expected:
        got = tuple(out.shape) if hasattr(out, "shape") else type(out).__name__
        raise ValueError(
            f"Expected {which} to return scores of shape {tuple(expected)} for one "
            f"example of shape {tuple(example.shape)}; got {got}."
        )
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(
            f"Expected {which} to return floating-point scores; got dtype "
            f"{out.dtype}. A score is a gradient of a log-density: return floats "
            "(the sampler casts them to the state's dtype)."
        )
