"""Sampling with the batch split over the devices of a mesh."""

from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
from jax.sharding import Mesh, NamedSharding
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from .._schedule import AbstractSDE
from .._sharding import batch_sharding, check_batch_size, data_mesh, replicate
from .._solve import check_key, draw_noise, split_key


def sharded_noise(
    sde: AbstractSDE,
    num_samples: int,
    shape: Sequence[int],
    *,
    key: PRNGKeyArray,
    mesh: Mesh | None = None,
    t_max: Float[ArrayLike, ""] | None = None,
) -> Float[Array, "n *d"]:
    """The starting noise a sampler draws from `key` for `num_samples` examples of
    `shape` ($\\mathcal N(0, \\sigma_{t_{max}}^2 I)$ from the first half of the
    key's one split, `split_key`), drawn directly as an array sharded over the `"data"`
    axis of `mesh` (by default `data_mesh()`): each device draws its own examples.

    Passed as `x_init` with the same `key`, it makes any sampler run sharded and give
    the samples it gives with `num_samples` and `shape` (JAX's partitionable
    Threefry draws the same numbers however an array is split).
    """
    mesh = data_mesh() if mesh is None else mesh
    check_batch_size(num_samples, mesh, "sample batch")
    _, t_max = sde.time_range(None, t_max)
    shape = (int(num_samples), *(int(s) for s in shape))

    @jax.jit
    def draw(key):
        noise_key, _ = split_key(check_key(key))
        x = draw_noise(sde, t_max, shape, noise_key)
        return jax.lax.with_sharding_constraint(x, batch_sharding(mesh))

    return draw(key)


@eqx.filter_jit
def _sample_constrained(
    sampler: Callable[..., Any],
    args: tuple,
    kwargs: dict,
    x_init: Array,
    key: PRNGKeyArray,
    sharding: NamedSharding,
) -> Any:
    samples = sampler(*args, key=key, x_init=x_init, **kwargs)
    n = x_init.shape[0]
    # Every per-example output comes back split as the input was (the final
    # `eqx.error_if` of a solve, a callback, would place it on one device).
    return jax.tree.map(
        lambda a: (
            jax.lax.with_sharding_constraint(a, sharding)
            if eqx.is_array(a) and a.ndim >= 1 and a.shape[0] == n
            else a
        ),
        samples,
    )


def sample_sharded(
    sampler: Callable[..., Any],
    *args: Any,
    key: PRNGKeyArray,
    num_samples: int,
    shape: Sequence[int],
    mesh: Mesh | None = None,
    t_max: Float[ArrayLike, ""] | None = None,
    **kwargs: Any,
) -> Any:
    """`sampler(*args, key=key, num_samples=num_samples, shape=shape, **kwargs)`
    with the samples' batch split over the devices of `mesh` (by default
    `data_mesh()`): one batched solve with a sharded batch, not a loop or `vmap`
    over devices. The samples equal the unsharded call's to float rounding.

    `sampler` is any superdiff sampler that takes `x_init` (`superdiff.sample`,
    `sample_ode`, ...) and whose second argument is the schedule (`args[1]`).
    `num_samples` must be a multiple of the device count. The array arguments
    (the models' weights) are replicated over the mesh. The call is compiled as
    one `eqx.filter_jit` region, in which every output with a leading axis of
    `num_samples` is kept sharded.

    XLA logs an "Involuntary full rematerialization" warning while compiling: it
    concerns the branch that raises a failed check's error (an `eqx.error_if`
    callback), which runs only on failure. See `docs/sharding.md`.
    """
    if len(args) < 2 or not isinstance(args[1], AbstractSDE):
        raise TypeError(
            "`sample_sharded(sampler, models, sde, ...)` needs the schedule (an "
            f"AbstractSDE) as the sampler's second argument; got {args[1:2]}."
        )
    mesh = data_mesh() if mesh is None else mesh
    x_init = sharded_noise(args[1], num_samples, shape, key=key, mesh=mesh, t_max=t_max)
    if t_max is not None:
        kwargs["t_max"] = t_max
    # The models (and any other array argument) on every device of the mesh.
    args, kwargs = replicate((args, kwargs), mesh)
    return _sample_constrained(sampler, args, kwargs, x_init, key, batch_sharding(mesh))
