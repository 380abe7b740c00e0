"""Training score networks: one `filter_jit` step, EMA weights, resumable loops."""

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh
from jaxtyping import Array, Float, Int, PRNGKeyArray, PyTree

from .._progress import progress_bar
from .._schedule import AbstractSDE
from .._sharding import (
    batch_sharding,
    check_batch_size,
    constrain,
    replicate,
    replicated,
    shard_batch,
)
from ._checkpoint import (
    CheckpointError,
    CheckpointWriter,
    check_writable,
    checkpoint_steps,
    load_checkpoint,
    remove_stale_temporaries,
)
from ._loss import batch_dsm_loss


class TrainState(eqx.Module):
    """Everything training needs to continue exactly where it stopped.

    The step's randomness is `fold_in(key(seed), step)`, so the state carries the
    seed and the step instead of a moving key; resuming from a checkpoint replays
    the same batches and noise as an uninterrupted run.
    """

    model: PyTree
    ema: PyTree
    opt_state: optax.OptState
    step: Int[Array, ""]
    seed: Int[Array, ""]


def make_optimizer(
    learning_rate: float = 1e-3,
    warmup_steps: int = 100,
    grad_clip: float = 1.0,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """Adam(W) with linear warm-up and global-norm gradient clipping, the usual
    diffusion recipe (Ho et al. 2020; Song et al. 2021)."""
    if learning_rate <= 0:
        raise ValueError(f"`learning_rate` must be positive; got {learning_rate}.")
    schedule = optax.linear_schedule(0.0, learning_rate, max(warmup_steps, 1))
    return optax.chain(
        optax.clip_by_global_norm(grad_clip),
        optax.adamw(schedule, weight_decay=weight_decay),
    )


def init_train_state(
    model: PyTree, optimizer: optax.GradientTransformation, seed: int = 0
) -> TrainState:
    """A fresh state: EMA weights start at the model's."""
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    return TrainState(
        model=model,
        ema=model,
        opt_state=opt_state,
        step=jnp.asarray(0),
        seed=jnp.asarray(seed),
    )


def ema_update(ema: PyTree, model: PyTree, decay: float) -> PyTree:
    """$\\bar\\theta \\leftarrow d\\,\\bar\\theta + (1 - d)\\,\\theta$ on the model's
    floating-point arrays."""
    ema_arrays, static = eqx.partition(ema, eqx.is_inexact_array)
    model_arrays = eqx.filter(model, eqx.is_inexact_array)
    new = jax.tree.map(
        lambda e, m: decay * e + (1 - decay) * m, ema_arrays, model_arrays
    )
    return eqx.combine(new, static)


def step_key(state: TrainState) -> PRNGKeyArray:
    return jax.random.fold_in(jax.random.key(state.seed), state.step)


LossFn = Callable[[PyTree, Any, PRNGKeyArray], Float[Array, ""]]


def dsm_objective(sde: AbstractSDE, dropout: bool = False) -> LossFn:
    """The batched denoising score-matching loss as a `(model, batch, key)` function;
    `dropout=True` gives every example its own dropout key (see `dsm_loss`)."""
    return lambda model, batch, key: batch_dsm_loss(
        model, sde, batch, key=key, dropout=dropout
    )


@eqx.filter_jit
def _train_step(
    batch: Any,
    state: TrainState,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    ema_decay: float,
    mesh: Mesh | None = None,
) -> tuple[TrainState, Float[Array, ""]]:
    if mesh is not None:  # the batch split over devices, the state replicated
        batch = constrain(batch, batch_sharding(mesh))
    key = step_key(state)
    loss, grads = eqx.filter_value_and_grad(loss_fn)(state.model, batch, key)
    params = eqx.filter(state.model, eqx.is_inexact_array)
    updates, opt_state = optimizer.update(grads, state.opt_state, params)
    model = eqx.apply_updates(state.model, updates)
    ema = ema_update(state.ema, model, ema_decay)
    new = TrainState(model, ema, opt_state, state.step + 1, state.seed)
    if mesh is not None:
        new = constrain(new, replicated(mesh))
    return new, loss


def train_step(
    state: TrainState,
    batch: Any,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    ema_decay: float = 0.999,
    mesh: Mesh | None = None,
) -> tuple[TrainState, Float[Array, ""]]:
    """One optimisation step: loss and gradients, the optimiser's update, the EMA.
    Compiled once (`eqx.filter_jit`) per model structure and batch shape.

    With a `mesh` (`superdiff.train.data_mesh()`) the step is data-parallel: the
    batch is split over the mesh's `"data"` axis, the returned state replicated
    (pass `replicate(state, mesh)` and `shard_batch(batch, mesh)`; XLA sums the
    gradients across devices)."""
    return _train_step(batch, state, loss_fn, optimizer, ema_decay, mesh)


class ArraySampler(eqx.Module):
    """Random batches drawn (with replacement) from an in-memory data set, keyed by
    the training step, so that a resumed run sees exactly the same batches."""

    data: Array
    batch_size: int = eqx.field(static=True)

    def __check_init__(self):
        if self.batch_size < 1:
            raise ValueError(f"`batch_size` must be positive; got {self.batch_size}.")
        if self.data.shape[0] < 1:
            raise ValueError("The training data set is empty.")

    def __call__(self, key: PRNGKeyArray) -> Array:
        idx = jax.random.randint(key, (self.batch_size,), 0, self.data.shape[0])
        return self.data[idx]


def _sampler_objective(
    loss_fn: LossFn, sampler: ArraySampler, mesh: Mesh | None = None
) -> LossFn:
    def loss(model, data, key):
        batch_key, loss_key = jax.random.split(key)
        batch = ArraySampler(data, sampler.batch_size)(batch_key)
        if mesh is not None:
            batch = constrain(batch, batch_sharding(mesh))
        return loss_fn(model, batch, loss_key)

    return loss


def _truncate_log(path: Path, step: int) -> None:
    """Drop the records a killed run logged after its last checkpoint (`step`), so
    that the resumed run's records follow on without repeats."""
    if not path.is_file():
        return
    text = path.read_text()
    lines = text.splitlines()
    if not text.endswith("\n"):
        lines = lines[:-1]  # killed while writing its last record
    keep = [line for line in lines if line and json.loads(line)["step"] <= step]
    kept = "".join(line + "\n" for line in keep)
    if kept != text:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(kept)
        os.replace(tmp, path)


def _resume(folder: Path, state: TrainState) -> tuple[TrainState, dict]:
    """Before the first step: refuse a checkpoint folder that cannot be written,
    remove the temporary files of a killed write, and load the newest intact
    checkpoint (passing over, and renaming `*.damaged`, newer damaged ones)."""
    if folder.is_file():
        raise CheckpointError(
            f"The checkpoint folder {folder} is a file (a single-file checkpoint of "
            "an earlier superdiff?): `fit` keeps step-*.ckpt files in a folder "
            "there. Move the file away; `load_checkpoint` still reads it.",
            folder,
            "not a checkpoint",
        )
    check_writable(folder, "checkpoint")
    remove_stale_temporaries(folder)
    if not checkpoint_steps(folder):
        return state, {}
    state, metadata = load_checkpoint(folder, state)
    for step, file in checkpoint_steps(folder):
        if step > int(state.step):
            file.replace(file.with_name(file.name + ".damaged"))
    return state, metadata


def _check_log(path: Path) -> None:
    """Before the first step: refuse a metrics log that cannot be appended to."""
    check_writable(path.parent, "metrics log")
    try:
        with open(path, "a"):
            pass
    except OSError as err:
        raise CheckpointError(
            f"Could not write the metrics log {path}: {err.strerror or err}.",
            path,
            "permission" if isinstance(err, PermissionError) else "io",
        ) from err


def fit(
    state: TrainState,
    data: ArraySampler | Iterator[Any],
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    *,
    ema_decay: float = 0.999,
    checkpoint_path: str | os.PathLike | None = None,
    checkpoint_every: int = 1000,
    keep_checkpoints: int = 3,
    log_every: int = 100,
    progress: bool = True,
    description: str = "train",
    position: int | None = None,
    log_path: str | os.PathLike | None = None,
    callback: Callable[[TrainState], dict[str, Any] | None] | None = None,
    callback_every: int | None = None,
    mesh: Mesh | None = None,
) -> tuple[TrainState, list[dict]]:
    """Train until `state.step == num_steps`, resuming from the newest intact
    checkpoint in the folder `checkpoint_path` if there is one.

    `data` is an `ArraySampler` (batches drawn inside the compiled step) or an
    iterator of batches; an iterator with `get_state`/`set_state` (a grain iterator,
    as from `superdiff.data.image_batches`) has its state saved in the checkpoint
    and restored on resume, so a resumed run reads the same batches. A progress bar
    (on line `position` of the terminal, for runs side by side in threads) shows the
    loss and steps/s; every `log_every` steps a record `{step, loss, steps_per_s}`
    is appended to the returned history (and, with `log_path`, appended to that
    JSON-lines file as it happens, so a resumed run continues the same log); every
    `checkpoint_every` steps, and at the end, the whole state is written atomically
    to `checkpoint_path/step-XXXXXXXX.ckpt` by a background thread (training goes on
    meanwhile), and the last `keep_checkpoints` are kept. A damaged checkpoint is
    passed over on resume, with a warning, for the newest intact one (and renamed
    `*.ckpt.damaged`). The checkpoint and log folders are checked for writing, and
    temporary files a killed write left are removed, before the first step; see
    docs/checkpoints.md.

    `callback(state)` runs every `callback_every` steps (e.g. to draw a grid of
    samples from the EMA weights or to evaluate); a dict it returns is merged into
    a history record `{"step": ..., **result}`.

    `mesh` (e.g. `superdiff.train.data_mesh()`, every device) makes the training
    data-parallel: each batch is split over the mesh's devices (its size must be a
    multiple of their count), the state (model, optimiser state, EMA) is
    replicated on all of them, also after loading a checkpoint written on any
    number of devices, and XLA sums the gradients across them. `None` (the default)
    trains on the default device, as without sharding; it is never turned on
    implicitly. See `docs/sharding.md`.
    """
    if num_steps < 0:
        raise ValueError(f"`num_steps` must be non-negative; got {num_steps}.")
    for name, every in (
        ("checkpoint_every", checkpoint_every),
        ("log_every", log_every),
        ("callback_every", callback_every),
    ):
        if every is not None and every < 1:
            raise ValueError(f"`{name}` must be positive; got {every}.")
    if callback is not None and callback_every is None:
        raise ValueError("`callback` needs `callback_every`, the steps between calls.")
    stateful = hasattr(data, "get_state") and hasattr(data, "set_state")
    writer = None
    if checkpoint_path is not None:
        writer = CheckpointWriter(checkpoint_path, keep_checkpoints)
        state, metadata = _resume(Path(checkpoint_path), state)
        if stateful and "data_state" in metadata:
            data.set_state(metadata["data_state"])  # pyright: ignore
    if log_path is not None:
        _check_log(Path(log_path))
    if mesh is not None:
        state = replicate(state, mesh)
    if isinstance(data, ArraySampler):
        if mesh is not None:
            check_batch_size(data.batch_size, mesh)
            data = ArraySampler(replicate(data.data, mesh), data.batch_size)
        objective = _sampler_objective(loss_fn, data, mesh)
        next_batch = lambda: data.data  # pyright: ignore[reportAttributeAccessIssue]
    else:
        objective = loss_fn
        if mesh is None:
            next_batch = lambda: next(data)  # pyright: ignore[reportArgumentType]
        else:
            next_batch = lambda: shard_batch(next(data), mesh)  # pyright: ignore
    start = int(state.step)
    history: list[dict] = []
    if log_path is not None:
        _truncate_log(Path(log_path), start)
    bar = progress_bar(
        total=num_steps, initial=start, desc=description, disable=not progress,
        dynamic_ncols=True, mininterval=0.5, position=position,
    )  # fmt: skip
    # Losses stay on the device until they are logged: reading one every step would
    # stall the dispatch of the next.
    losses: list[Array] = []

    def record(entry: dict[str, Any]) -> None:
        history.append(entry)
        if log_path is not None:
            with open(log_path, "a") as f:
                f.write(json.dumps(entry) + "\n")

    tic = time.perf_counter()
    for step in range(start, num_steps):
        state, loss = train_step(
            state, next_batch(), objective, optimizer, ema_decay, mesh
        )
        losses.append(loss)
        bar.update(1)
        done = step + 1
        if done % log_every == 0 or done == num_steps:
            mean_loss = float(jnp.mean(jnp.stack(losses)))
            rate = len(losses) / max(time.perf_counter() - tic, 1e-9)
            entry = {"step": done, "loss": mean_loss, "steps_per_s": rate}
            if not math.isfinite(mean_loss):
                raise FloatingPointError(f"The loss became {mean_loss} at step {done}.")
            record(entry)
            bar.set_postfix(loss=f"{mean_loss:.4f}", steps_per_s=f"{rate:.2f}")
            losses, tic = [], time.perf_counter()
        if callback is not None and done % callback_every == 0:  # pyright: ignore
            callback_start = time.perf_counter()
            result = callback(state)
            if result:
                record({"step": done, **result})
            tic += time.perf_counter() - callback_start  # steps/s counts steps only
        if writer is not None and (done % checkpoint_every == 0 or done == num_steps):
            metadata: dict[str, Any] = {"step": done}
            if stateful:
                metadata["data_state"] = data.get_state()  # pyright: ignore
            writer.save(done, state, metadata)
    if writer is not None:
        writer.wait()  # the last checkpoint is on disk when `fit` returns
    bar.close()
    return state, history
