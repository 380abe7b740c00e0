"""Data parallelism on JAX's own sharding: a 1-D device mesh, the batch split over
it, everything else replicated; XLA inserts the gradient all-reduce."""

import os
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from jaxtyping import Array, PyTree


DATA_AXIS = "data"

# Variables a launcher sets when it starts one process per host (or per device):
# JAX's own, Open MPI's and SLURM's. `jax.distributed.initialize()` reads them.
_LAUNCHER_VARIABLES = (
    "JAX_COORDINATOR_ADDRESS",
    "OMPI_COMM_WORLD_SIZE",
    "SLURM_NTASKS",
)


def maybe_initialize_distributed() -> bool:
    """Join a multi-host run when a launcher set one up; do nothing otherwise.

    Calls `jax.distributed.initialize()` (which finds the coordinator, the number of
    processes and this one's index in the environment) when one of
    `JAX_COORDINATOR_ADDRESS`, `OMPI_COMM_WORLD_SIZE` (Open MPI's `mpirun`) or
    `SLURM_NTASKS` with more than one task (SLURM's `srun`) is set. Call it first,
    before anything touches a device. Returns whether it initialised.

    After it, `jax.devices()` lists the devices of every host and `data_mesh()`
    spans them all; each process feeds its own part of the batch (`shard_batch`).
    """
    present = [name for name in _LAUNCHER_VARIABLES if os.environ.get(name)]
    if present == ["SLURM_NTASKS"] and int(os.environ["SLURM_NTASKS"]) <= 1:
        return False  # one SLURM task: a single-process run
    if not present:
        return False
    jax.distributed.initialize()
    return True


def data_mesh(devices: Sequence[Any] | None = None) -> Mesh:
    """A 1-D mesh with axis `"data"` over `devices` (by default every device of
    every process, `jax.devices()`: on one host, all its local devices)."""
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("`devices` is empty; a mesh needs at least one device.")
    return jax.make_mesh(
        (len(devices),),
        (DATA_AXIS,),
        devices=devices,
        axis_types=(jax.sharding.AxisType.Auto,),
    )


def replicated(mesh: Mesh) -> NamedSharding:
    """The sharding that puts a whole copy on every device of `mesh`."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """The sharding that splits an array's first (batch) axis over `"data"`."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def _put(x: Any, sharding: NamedSharding) -> Array:
    if jax.process_count() == 1:
        return jax.device_put(x, sharding)
    # Several hosts: each gives its own part (for a replicated sharding, all of it).
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))


def replicate(tree: PyTree, mesh: Mesh) -> PyTree:
    """`tree` with every array copied whole onto every device of `mesh` (the
    parameters, optimiser state and EMA of data-parallel training); the rest of the
    tree is left as it is."""
    arrays, static = eqx.partition(tree, eqx.is_array)
    sharding = replicated(mesh)
    return eqx.combine(jax.tree.map(lambda x: _put(x, sharding), arrays), static)


def _local_size(mesh: Mesh) -> int:
    return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)


def check_batch_size(batch_size: int, mesh: Mesh, name: str = "batch") -> None:
    """Raise unless `batch_size` (this process's examples) splits evenly over this
    process's devices in `mesh`."""
    devices = _local_size(mesh)
    if batch_size % devices:
        raise ValueError(
            f"The {name} size {batch_size} does not split evenly over the {devices} "
            f"devices of the mesh; use a multiple of {devices}."
        )


def shard_batch(batch: PyTree, mesh: Mesh) -> PyTree:
    """Every array of `batch` split along its first axis over the `"data"` axis of
    `mesh`: device `i` of `n` holds examples `i * b / n` to `(i + 1) * b / n`.

    On several hosts each process passes its own part of the global batch (as its
    data pipeline produced it); the result is one global array.

    **Raises:** `ValueError` when a batch size does not split evenly over the
    devices, naming both numbers.
    """
    arrays, static = eqx.partition(
        batch, lambda x: isinstance(x, np.ndarray | np.generic | jax.Array)
    )
    leaves = jax.tree.leaves(arrays)
    if not leaves:
        raise ValueError("`batch` holds no arrays to shard.")
    for leaf in leaves:
        shape = np.shape(leaf)
        if not shape:
            raise ValueError(
                "Every array of `batch` needs a leading batch axis to shard; got a "
                "scalar."
            )
        check_batch_size(shape[0], mesh)
    sharding = batch_sharding(mesh)
    return eqx.combine(jax.tree.map(lambda x: _put(x, sharding), arrays), static)


def constrain(tree: PyTree, sharding: NamedSharding) -> PyTree:
    """`jax.lax.with_sharding_constraint` on every array of `tree`, inside `jit`."""
    arrays, static = eqx.partition(tree, eqx.is_array)
    constrained = jax.tree.map(
        lambda x: jax.lax.with_sharding_constraint(x, sharding), arrays
    )
    return eqx.combine(constrained, static)
