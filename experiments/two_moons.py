"""Two moons: superpose a model of the upper moon and one of the lower moon.

Trains model A on the upper moon, model B on the lower moon and a reference model on
both; samples A alone, B alone, the union model, fixed averaging, SuperDiff OR and
SuperDiff AND; writes `two_moons.png` and `metrics.json` to the output folder.

    uv run experiments/two_moons.py                  # defaults: a few CPU minutes
    uv run experiments/two_moons.py --help

Outputs go to `--out` (default `outputs/two_moons/`), checkpoints to
`<out>/checkpoints/`: a rerun with the same `--out` resumes a stopped training and
reuses finished models (delete `<out>/checkpoints/` or pass a new `--out` to start
fresh).
"""

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import diffrax as dfx
import jax
import jax.numpy as jnp
import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import superdiff as sd  # noqa: E402
import superdiff.experiment as cli  # noqa: E402


SOLVERS = {"euler": dfx.Euler, "heun": dfx.Heun, "sra1": dfx.SRA1}
# "default": what `sample` picks for each operator (the corrected kernel ratio for
# OR, the uncorrected one for AND; `docs/math.md` §3.6).
ESTIMATORS = {
    "default": lambda: None,
    "ito": sd.ItoEstimator,
    "kernel": sd.KernelRatioEstimator,
}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = cli.ExperimentParser(description=__doc__, prog=Path(__file__).name)
    p.add_argument(
        "--out", type=cli.output_dir, default=Path("outputs/two_moons"),
        help="output folder; checkpoints in <out>/checkpoints/ are reused",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of data, models, noise")
    p.add_argument(
        "--train-steps", type=cli.positive_int, default=6000, help="per model"
    )
    p.add_argument("--batch-size", type=cli.positive_int, default=256)
    p.add_argument(
        "--train-size", type=cli.positive_int, default=20_000, help="points per data set"
    )  # fmt: skip
    p.add_argument("--width", type=cli.positive_int, default=128, help="MLP width")
    p.add_argument("--depth", type=cli.positive_int, default=3, help="MLP depth")
    p.add_argument("--lr", type=cli.positive_float, default=2e-3, help="learning rate")
    p.add_argument(
        "--num-samples", type=cli.positive_int, default=2000, help="per method"
    )
    p.add_argument(
        "--num-steps", type=cli.positive_int, default=500, help="sampling steps"
    )
    p.add_argument(
        "--solver",
        choices=sorted(SOLVERS),
        default="euler",
        help="SDE solver for the methods that do not track densities (A, B, union, "
        "averaging); OR and AND track log-densities and always use Euler",
    )
    p.add_argument(
        "--estimator", choices=sorted(ESTIMATORS), default="default",
        help="log-density estimator of OR and AND ('default': the operator's own)",
    )  # fmt: skip
    p.add_argument(
        "--and-curvature",
        action="store_true",
        help="AND with the curvature correction (exact tracked densities; one JVP "
        "per step on top of the score evaluations)",
    )
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bars or lines"
    )
    return p.parse_args(argv)


def train_model(name, data, sde, args, key):
    network = sd.nn.MLP(2, width=args.width, depth=args.depth, key=key)
    optimizer = sd.train.make_optimizer(args.lr, warmup_steps=200)
    state = sd.train.init_train_state(network, optimizer, seed=args.seed)
    state, history = sd.train.fit(
        state,
        sd.train.ArraySampler(data, args.batch_size),
        sd.train.dsm_objective(sde),
        optimizer,
        args.train_steps,
        checkpoint_path=args.out / "checkpoints" / f"{name}.eqx",
        checkpoint_every=2000,
        log_every=500,
        progress=not args.no_progress,
        description=f"train {name}",
    )
    return sd.EpsilonScore(state.ema, sde), history


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    sde = sd.VPSDE()
    keys = jax.random.split(jax.random.key(args.seed), 10)
    upper = sd.data.two_moons(args.train_size, key=keys[0], moon="upper")
    lower = sd.data.two_moons(args.train_size, key=keys[1], moon="lower")
    both = sd.data.two_moons(args.train_size, key=keys[2], moon="both")
    test_upper = sd.data.two_moons(args.num_samples, key=keys[3], moon="upper")
    test_lower = sd.data.two_moons(args.num_samples, key=keys[4], moon="lower")
    test_both = sd.data.two_moons(args.num_samples, key=keys[5], moon="both")

    tic = time.perf_counter()
    model_a, hist_a = train_model("A_upper", upper, sde, args, keys[6])
    model_b, hist_b = train_model("B_lower", lower, sde, args, keys[7])
    union, hist_u = train_model("union", both, sde, args, keys[8])
    train_seconds = time.perf_counter() - tic

    solver = SOLVERS[args.solver]()
    common = dict(num_samples=args.num_samples, shape=(2,), num_steps=args.num_steps)
    tracked = dict(common, estimator=ESTIMATORS[args.estimator]())
    pair = [model_a, model_b]
    methods = {
        "A (upper) alone": lambda k: sd.sample(model_a, sde, key=k, solver=solver, **common),
        "B (lower) alone": lambda k: sd.sample(model_b, sde, key=k, solver=solver, **common),
        "union model": lambda k: sd.sample(union, sde, key=k, solver=solver, **common),
        "averaging": lambda k: sd.sample(pair, sde, sd.Average(), key=k, solver=solver, **common),
        "SuperDiff OR": lambda k: sd.sample(pair, sde, sd.Or(), key=k, **tracked),
        "SuperDiff AND": lambda k: sd.sample(
            pair, sde, sd.And(curvature_correction=args.and_curvature), key=k,
            **tracked,
        ),
    }  # fmt: skip
    sample_key = keys[9]
    results, samples = {}, {}
    for name, run in methods.items():
        tic = time.perf_counter()
        out = run(sample_key)
        seconds = time.perf_counter() - tic
        samples[name] = out.x
        record = {
            "share_nearer_upper": float(
                sd.metrics.nearest_share(out.x, test_upper, test_lower)
            ),
            "energy_distance_to_two_moons": float(
                sd.metrics.energy_distance(out.x, test_both)
            ),
            "sampling_seconds": seconds,
        }
        if name == "SuperDiff AND":
            assert out.log_q is not None
            gap = jnp.abs(out.log_q[:, 0] - out.log_q[:, 1])
            record["mean_abs_log_q_gap"] = float(jnp.mean(gap))
        results[name] = record
        print(f"{name:>16}: " + ", ".join(f"{k} {v:.4g}" for k, v in record.items()))

    floor = float(sd.metrics.energy_distance(test_both, both[: args.num_samples]))
    metrics = {
        "config": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
        },
        "methods": results,
        "energy_distance_floor_two_moons_vs_fresh_two_moons": floor,
        "final_train_loss": {
            "A_upper": hist_a[-1]["loss"] if hist_a else None,
            "B_lower": hist_b[-1]["loss"] if hist_b else None,
            "union": hist_u[-1]["loss"] if hist_u else None,
        },
        "train_seconds": train_seconds,
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    plot(samples, upper, lower, results, args, args.out / "two_moons.png")
    print(f"wrote {args.out / 'metrics.json'} and {args.out / 'two_moons.png'}")


def plot(samples, upper, lower, results, args, path: Path) -> None:
    fig, axes = plt.subplots(2, 3, figsize=(12, 7.5), sharex=True, sharey=True)
    for ax, (name, x) in zip(axes.flat, samples.items(), strict=True):
        ax.scatter(
            *upper[:3000].T, s=2, c="tab:blue", alpha=0.15, label="upper moon data"
        )
        ax.scatter(
            *lower[:3000].T, s=2, c="tab:orange", alpha=0.15, label="lower moon data"
        )
        ax.scatter(*x.T, s=3, c="k", alpha=0.6, label="samples")
        r = results[name]
        ax.set_title(
            f"{name}\nupper share {r['share_nearer_upper']:.2f}, "
            f"energy dist. {r['energy_distance_to_two_moons']:.3f}",
            fontsize=10,
        )
        ax.set_xlim(-3, 3)
        ax.set_ylim(-2.2, 2.2)
        ax.set_aspect("equal")
    for ax in axes[-1]:
        ax.set_xlabel("$x_1$")
    for ax in axes[:, 0]:
        ax.set_ylabel("$x_2$")
    axes.flat[0].legend(loc="lower left", fontsize=7, markerscale=3)
    tracked = f"Euler with the {args.estimator} estimator" + (
        ", curvature-corrected AND" if args.and_curvature else ""
    )
    fig.suptitle(
        f"Two moons: {args.num_samples} samples per method, {args.num_steps} "
        f"reverse-SDE steps; models trained {args.train_steps} steps (seed "
        f"{args.seed})\nsolver: {args.solver} for A, B, union and averaging; "
        f"{tracked} for OR and AND",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    cli.run(main)
