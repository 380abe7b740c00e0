"""CIFAR-10 UNet throughput, on one device and data-parallel over all of them,
measured side by side in one run.

    uv run benchmarks/cifar10.py                               # the paper's network
    uv run benchmarks/cifar10.py --small --devices 2 --batch-size 16 \\
        --num-samples 16 --num-steps 4 --repeats 3             # a CPU-sized check

Prints medians over interleaved rounds (after a compile-and-warm-up call each) of

- training throughput in images/s: one `train_step` (DSM loss with dropout,
  gradients, Adam, EMA), on the first device alone and with the batch split over
  every device (`superdiff.train.data_mesh`, `shard_batch`, the state replicated);
- sampling throughput in images/s: `superdiff.sample` (Euler–Maruyama,
  `--num-steps` steps) of `--num-samples` images, on one device and through
  `superdiff.train.sample_sharded`;

and the ratios sharded / single device. `--devices N` simulates N CPU devices
(XLA's `--xla_force_host_platform_device_count`, set before JAX starts); on a
machine with accelerators the devices are the real ones and the flag is ignored.
`--bf16` computes the network in bfloat16 with float32 parameters (the parameters
are cast inside the loss, so gradients, Adam and EMA stay float32); it is
implemented but unmeasured on accelerators, and does not pay on a CPU.

The images are random, in CIFAR-10's shape: only time matters here.
"""

import argparse
import os


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--small", action="store_true", help="UNet.cifar10_small")
    p.add_argument("--devices", type=int, default=None, help="simulated CPU devices")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--train-steps", type=int, default=5, help="steps per round")
    p.add_argument("--num-samples", type=int, default=128)
    p.add_argument("--num-steps", type=int, default=200, help="sampling steps")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--bf16", action="store_true", help="bfloat16 compute")
    return p.parse_args()


def main(args: argparse.Namespace) -> None:
    # Imported here, after the device count is set.
    import statistics
    import time

    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    import superdiff as sd

    def timed_interleaved(fns: dict, repeats: int) -> dict[str, float]:
        for fn in fns.values():
            jax.block_until_ready(fn())
        times: dict[str, list[float]] = {name: [] for name in fns}
        for _ in range(repeats):
            for name, fn in fns.items():
                tic = time.perf_counter()
                jax.block_until_ready(fn())
                times[name].append(time.perf_counter() - tic)
        return {name: statistics.median(ts) for name, ts in times.items()}

    make = sd.nn.UNet.cifar10_small if args.small else sd.nn.UNet.cifar10
    sde = sd.VPSDE()
    keys = jax.random.split(jax.random.key(0), 3)
    mesh = sd.train.data_mesh()
    n_dev = mesh.size
    print(
        f"backend {jax.default_backend()}, {n_dev} device(s) "
        f"({jax.devices()[0].device_kind}), "
        f"{'cifar10_small' if args.small else 'cifar10 (paper)'} UNet, "
        f"batch {args.batch_size}, {args.num_samples} samples x {args.num_steps} "
        f"steps, {'bfloat16 compute' if args.bf16 else 'float32'}, median of "
        f"{args.repeats} interleaved rounds"
    )

    unet = make(key=keys[0])
    optimizer = sd.train.make_optimizer(2e-4, warmup_steps=5000)
    loss_fn = sd.train.dsm_objective(sde, dropout=True)
    to_bf16 = lambda a: a.astype(jnp.bfloat16) if eqx.is_inexact_array(a) else a
    if args.bf16:
        f32_loss = loss_fn
        loss_fn = lambda model, batch, key: f32_loss(
            jax.tree.map(to_bf16, model), batch, key
        )
    state = sd.train.init_train_state(unet, optimizer)
    rng = np.random.default_rng(0)
    batch = rng.uniform(-1, 1, (args.batch_size, 32, 32, 3)).astype(np.float32)
    one = sd.train.data_mesh(jax.devices()[:1])  # the first device alone
    states = {
        "single": sd.train.replicate(state, one),
        "sharded": sd.train.replicate(state, mesh),
    }
    batches = {
        "single": sd.train.shard_batch(batch, one),
        "sharded": sd.train.shard_batch(batch, mesh),
    }
    meshes = {"single": None, "sharded": mesh}

    def train(kind):
        def run():
            state, losses = states[kind], []
            for _ in range(args.train_steps):
                state, loss = sd.train.train_step(
                    state, batches[kind], loss_fn, optimizer, mesh=meshes[kind]
                )
                losses.append(loss)
            states[kind] = state
            return losses

        return run

    train_times = timed_interleaved(
        {kind: train(kind) for kind in states}, args.repeats
    )

    ema = states["single"].ema
    if args.bf16:
        ema = jax.tree.map(to_bf16, ema)
    score = sd.EpsilonScore(ema, sde)
    common = dict(num_samples=args.num_samples, shape=(32, 32, 3))
    sample_times = timed_interleaved(
        {
            "single": lambda: sd.sample(
                score, sde, key=keys[1], num_steps=args.num_steps, **common
            ).x,
            "sharded": lambda: sd.train.sample_sharded(
                sd.sample, score, sde, key=keys[1], num_steps=args.num_steps,
                mesh=mesh, **common,
            ).x,
        },
        args.repeats,
    )  # fmt: skip

    train_rate = {
        k: args.train_steps * args.batch_size / t for k, t in train_times.items()
    }
    sample_rate = {k: args.num_samples / t for k, t in sample_times.items()}
    print(f"\n| | one device | sharded over {n_dev} | sharded / one |")
    print("|---|---|---|---|")
    print(
        f"| training, images/s | {train_rate['single']:.1f} | "
        f"{train_rate['sharded']:.1f} | {train_rate['sharded'] / train_rate['single']:.2f} |"
    )
    print(
        f"| training step, ms | {train_times['single'] / args.train_steps * 1e3:.0f} | "
        f"{train_times['sharded'] / args.train_steps * 1e3:.0f} | |"
    )
    print(
        f"| sampling ({args.num_steps} steps), images/s | {sample_rate['single']:.2f} | "
        f"{sample_rate['sharded']:.2f} | "
        f"{sample_rate['sharded'] / sample_rate['single']:.2f} |"
    )
    print(
        f"| sampling, network evaluations x images/s | "
        f"{sample_rate['single'] * args.num_steps:.0f} | "
        f"{sample_rate['sharded'] * args.num_steps:.0f} | |"
    )


if __name__ == "__main__":
    arguments = parse()
    if arguments.devices is not None:
        flags = os.environ.get("XLA_FLAGS", "")
        os.environ["XLA_FLAGS"] = (
            f"{flags} --xla_force_host_platform_device_count={arguments.devices}"
        )
    main(arguments)
