"""UNet training and sampling throughput, measured side by side in one run.

    uv run benchmarks/unet.py                      # MNIST UNet, CPU-sized
    uv run benchmarks/unet.py --model cifar10 --batch-size 128 --num-samples 256

Prints medians over interleaved rounds (after a compile-and-warm-up call) and:

- training throughput in images/s (one `train_step`: DSM loss with dropout,
  gradients, Adam, EMA);
- the grain pipeline's throughput alone (`image_batches`: shuffle, batch, scale),
  as a multiple of the training throughput (it must not be the bottleneck: well
  above 1), and training fed by the pipeline vs training on one fixed batch
  (target <= 1.05);
- SuperDiff OR and AND over M = 2 UNets vs two single-model samplings
  (target <= 1.10);
- a single-model sampling vs as many batched forward passes of its UNet as it
  takes steps, each compiled on its own (target <= 1.10: the solver's loop must
  not slow the network down, as channels-first convolutions inside a loop do on
  XLA:CPU);
- two trainings, and two single-model samplings, side by side in two threads vs
  one after the other (XLA:CPU runs each convolution on one core, so on a
  multi-core CPU two jobs at once should take well under twice one; the
  split-MNIST experiment runs its jobs so).

The data are random images in the data set's shape, so that the benchmark needs
no download; the pipeline's cost does not depend on the pixel values.
"""

import argparse
import concurrent.futures
import itertools
import time
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import superdiff as sd
from sampling import timed_interleaved


MODELS = {
    "mnist": (sd.nn.UNet.mnist, (28, 28, 1), 60_000),
    "cifar10": (sd.nn.UNet.cifar10, (32, 32, 3), 50_000),
}


def pipeline_rate(source, batch_size: int, num_batches: int) -> float:
    """Images per second drawn from a fresh pipeline (after its first batch)."""
    it = iter(sd.data.image_batches(source, batch_size, seed=0, with_labels=False))
    next(it)
    tic = time.perf_counter()
    for batch in itertools.islice(it, num_batches):
        np.asarray(batch)
    return num_batches * batch_size / (time.perf_counter() - tic)


def side_by_side(*fns):
    """Run the callables at once, each in a thread of its own."""
    with concurrent.futures.ThreadPoolExecutor(len(fns)) as pool:
        return [f.result() for f in [pool.submit(fn) for fn in fns]]


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="mnist")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--train-steps", type=int, default=3, help="steps per round")
    p.add_argument("--num-samples", type=int, default=64)
    p.add_argument("--num-steps", type=int, default=20, help="sampling steps")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    make, shape, size = MODELS[args.model]
    sde = sd.VPSDE()
    keys = jax.random.split(jax.random.key(0), 4)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (size, *shape), dtype=np.uint8)
    source = sd.data.ImageArrays(images, rng.integers(0, 10, size))
    b = args.batch_size
    print(
        f"backend {jax.default_backend()}, {args.model} UNet, batch {b}, "
        f"median of {args.repeats} interleaved rounds"
    )

    # Training: fed by the pipeline vs one fixed batch already in memory.
    unet = make(key=keys[0])
    optimizer = sd.train.make_optimizer(2e-4)
    loss_fn = sd.train.dsm_objective(sde, dropout=True)
    states = {"pipeline": sd.train.init_train_state(unet, optimizer)}
    states["fixed"] = states["pipeline"]
    states["other"] = sd.train.init_train_state(make(key=keys[1]), optimizer)
    batches = iter(sd.data.image_batches(source, b, seed=1, with_labels=False))
    fixed = jax.device_put(next(batches))

    def train(kind):
        def run():
            state, losses = states[kind], []
            for _ in range(args.train_steps):
                batch = next(batches) if kind == "pipeline" else fixed
                state, loss = sd.train.train_step(state, batch, loss_fn, optimizer)
                losses.append(loss)
            states[kind] = state
            return losses

        return run

    train_times = timed_interleaved(
        {
            "pipeline": train("pipeline"),
            "fixed": train("fixed"),
            "two, one after the other": lambda: train("fixed")() + train("other")(),
            "two side by side": lambda: side_by_side(train("fixed"), train("other")),
        },
        args.repeats,
    )
    train_rate = args.train_steps * b / train_times["fixed"]
    data_rate = pipeline_rate(source, b, num_batches=max(50, 4 * args.train_steps))

    # Sampling: two single-model runs vs one superposed run of both.
    low = sd.EpsilonScore(unet, sde)
    high = sd.EpsilonScore(make(key=keys[1]), sde)
    common: dict[str, Any] = dict(
        shape=shape, num_samples=args.num_samples, num_steps=args.num_steps,
        solver=dfx.Euler(),
    )  # fmt: skip

    def singles():
        a = sd.sample(low, sde, key=keys[2], **common).x
        return a, sd.sample(high, sde, key=keys[3], **common).x

    def singles_side_by_side():
        return side_by_side(
            lambda: sd.sample(low, sde, key=keys[2], **common).x,
            lambda: sd.sample(high, sde, key=keys[3], **common).x,
        )

    forward = eqx.filter_jit(
        lambda score, x: jax.vmap(lambda xi: score(jnp.asarray(0.5), xi))(x)
    )
    noise = jax.random.normal(keys[2], (args.num_samples, *shape))

    def forwards():
        return [forward(low, noise) for _ in range(2 * args.num_steps)]

    sample_times = timed_interleaved(
        {
            f"{2 * args.num_steps} forward passes": forwards,
            "two singles": singles,
            "two singles side by side": singles_side_by_side,
            "OR": lambda: sd.sample([low, high], sde, sd.Or(), key=keys[2], **common).x,
            "AND": lambda: (
                sd.sample([low, high], sde, sd.And(), key=keys[2], **common).x
            ),
        },
        args.repeats,
    )

    print(
        f"\ntraining step, batch {b}: {train_times['fixed'] / args.train_steps * 1e3:.0f} ms"
    )
    print(f"training throughput: {train_rate:.1f} images/s")
    print(f"pipeline alone: {data_rate:.0f} images/s")
    print(
        f"sampling {args.num_samples} images, {args.num_steps} steps: two singles "
        f"{sample_times['two singles']:.2f} s, OR {sample_times['OR']:.2f} s, "
        f"AND {sample_times['AND']:.2f} s; {2 * args.num_steps} forward passes "
        f"{sample_times[f'{2 * args.num_steps} forward passes']:.2f} s"
    )
    print("\n| ratio | measured | target |\n|---|---|---|")
    print(f"| pipeline / training throughput | {data_rate / train_rate:.1f} | > 1 |")
    ratio = train_times["pipeline"] / train_times["fixed"]
    print(
        f"| training fed by the pipeline / on a fixed batch | {ratio:.3f} | <= 1.05 |"
    )
    for name in ("OR", "AND"):
        ratio = sample_times[name] / sample_times["two singles"]
        print(f"| {name} M = 2 / two single-model samplings | {ratio:.3f} | <= 1.10 |")
    ratio = (
        sample_times["two singles"]
        / sample_times[f"{2 * args.num_steps} forward passes"]
    )
    print(
        f"| single-model sampling / its steps' forward passes | {ratio:.3f} | <= 1.10 |"
    )
    ratio = train_times["two side by side"] / train_times["two, one after the other"]
    print(f"| two trainings side by side / one after the other | {ratio:.3f} | < 1 |")
    ratio = sample_times["two singles side by side"] / sample_times["two singles"]
    print(f"| two samplings side by side / one after the other | {ratio:.3f} | < 1 |")


if __name__ == "__main__":
    main()
