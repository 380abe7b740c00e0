"""Split MNIST: superpose a model of digits 0-4 and a model of digits 5-9.

Skreta et al.'s CIFAR-10 protocol (Table 1) on MNIST. Trains three UNets, on the
low digits (0-4), the high digits (5-9) and all ten (the reference), and a small
classifier on the real training set; samples the low model alone, the high model
alone, "low OR high" by a random choice of model per sample, fixed averaging,
SuperDiff OR (T = 1 and T = 100) and SuperDiff AND; and scores every method with
the classifier: the class histogram, the Fréchet distance to the test set in the
classifier's feature space (with the train-vs-test floor at the same sample size),
and the share of confident predictions. Writes `results.md`, `results.json`,
`summary.png` (grids and class histograms), `training_grids.png` and sample grids
to the output folder, and, while training, a grid of samples from each model every
`--grid-every` steps under `<out>/grids/` and a metrics log under `<out>/logs/`.
The trainings and samplings are jobs run `--workers` at a time (two on a CPU), each
sampling as soon as the models it needs are trained.

    uv run experiments/split_mnist.py --data-dir PATH   # CPU preset
    uv run experiments/split_mnist.py --data-dir PATH --preset gpu
    uv run experiments/split_mnist.py --show-preset gpu  # a preset's settings
    uv run experiments/split_mnist.py --help

PATH holds the MNIST files (`train-images-idx3-ubyte.gz` ...) or a
tensorflow-datasets copy; without `--data-dir`, tensorflow-datasets' default
folder. Every preset setting has a flag that overrides it. Outputs go to `--out`
(default `outputs/split_mnist/`); everything is checkpointed under
`<out>/checkpoints/`: a rerun with the same `--out` resumes a killed run where it
stopped and reuses finished models (delete `<out>/checkpoints/` or pass a new
`--out` to start fresh).
"""

import argparse
import dataclasses
import functools
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import diffrax as dfx
import jax
import matplotlib
import numpy as np
from tqdm.auto import tqdm


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import superdiff as sd  # noqa: E402
import superdiff.experiment as cli  # noqa: E402
from superdiff.experiment import Job, run_jobs, save_grid, timed  # noqa: E402


LOW, HIGH, ALL = (0, 1, 2, 3, 4), (5, 6, 7, 8, 9), tuple(range(10))


def _setting(help: str):
    return dataclasses.field(metadata={"help": help})


@dataclasses.dataclass(frozen=True)
class Preset:
    unet: Literal["small", "large"] = _setting("UNet: small (UNet.mnist) or large")
    train_steps: int = _setting("training steps per UNet")
    batch_size: int = _setting("training batch size")
    lr: float = _setting("peak learning rate")
    warmup_steps: int = _setting("learning-rate warm-up steps")
    num_samples: int = _setting("samples per method")
    num_steps: int = _setting("reverse-SDE steps per sample")
    sample_batch: int = _setting("samples drawn at once")
    grid_every: int = _setting("training steps between sample grids")
    classifier_steps: int = _setting("classifier training steps")
    # Trainings and samplings side by side; see `run_jobs`.
    workers: int = _setting("jobs run side by side")


PRESETS = {
    # 41-61 min on 2 CPU cores, two jobs at a time, by the day's pace (a training
    # step alone has taken 0.7-1.8 s); see docs/split_mnist.md.
    "cpu": Preset(
        unet="small", train_steps=1200, batch_size=64, lr=1e-3, warmup_steps=100,
        num_samples=256, num_steps=100, sample_batch=256, grid_every=200,
        classifier_steps=1400, workers=2,
    ),
    # Paper-like settings for one accelerator: a wider UNet, 1000 sampling steps.
    "gpu": Preset(
        unet="large", train_steps=40_000, batch_size=128, lr=2e-4,
        warmup_steps=1000, num_samples=5000, num_steps=1000, sample_batch=1000,
        grid_every=5000, classifier_steps=3000, workers=1,
    ),
}  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = cli.ExperimentParser(description=__doc__, prog=Path(__file__).name)
    p.add_argument(
        "--data-dir", type=Path, default=None,
        help="folder with MNIST (the original files or a tensorflow-datasets copy); "
        "None: tensorflow-datasets' default folder",
    )  # fmt: skip
    p.add_argument(
        "--out", type=cli.output_dir, default=Path("outputs/split_mnist"),
        help="output folder; checkpoints in <out>/checkpoints/ are reused",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of models and noise")
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bars or lines"
    )
    p.add_presets(PRESETS, "cpu")
    return p.parse_args(argv)


def make_unet(kind: str, key) -> sd.nn.UNet:
    if kind == "small":
        return sd.nn.UNet.mnist(key=key)
    if kind == "large":
        return sd.nn.UNet(
            (28, 28, 1), base_channels=64, channel_mults=(1, 2, 2),
            num_res_blocks=2, attention_resolutions=(14,), dropout=0.1,
            num_groups=16, num_heads=4, key=key,
        )  # fmt: skip
    raise ValueError(f"`unet` must be 'small' or 'large'; got {kind!r}.")


def draw(
    models, sde, operator, *, key, num: int, preset: Preset, label, progress,
    position=None,
):  # fmt: skip
    """`num` samples in chunks of `preset.sample_batch`, clipped to [-1, 1], and
    the tracked log-densities when the operator tracks them."""
    xs, log_qs = [], []
    tic = time.perf_counter()
    chunks = range(0, num, preset.sample_batch)
    bar = cli.progress_bar(
        chunks, desc=f"sampling {label}", disable=not progress, position=position
    )
    for start in bar:
        key, sub = jax.random.split(key)
        # Every method on the same steps, uniform in t: `sample` would otherwise
        # put the steps of the density-tracking operators (OR, AND) uniform in the
        # log-SNR, and the table would compare two discretisations.
        out = sd.sample(
            models, sde, operator, key=sub, shape=(28, 28, 1),
            num_samples=min(preset.sample_batch, num - start),
            num_steps=preset.num_steps, solver=dfx.Euler(), spacing="t",
        )  # fmt: skip
        xs.append(np.asarray(out.x))
        if out.log_q is not None:
            log_qs.append(np.asarray(out.log_q))
    x = np.clip(np.concatenate(xs), -1, 1)
    tqdm.write(f"{label}: {num} samples in {time.perf_counter() - tic:.0f} s")
    return x, (np.concatenate(log_qs) if log_qs else None)


def train_classifier(train, test, out, preset, seed, progress, position=None):
    classifier = sd.nn.Classifier(key=jax.random.key(seed + 100))
    optimizer = sd.train.make_optimizer(1e-3, warmup_steps=100)
    state = sd.train.init_train_state(classifier, optimizer, seed=seed + 100)
    batches = iter(sd.data.image_batches(train, 128, seed=seed + 100))
    state, _ = sd.train.fit(
        state, batches, sd.train.classifier_loss, optimizer, preset.classifier_steps,
        ema_decay=0.99, checkpoint_path=out / "checkpoints" / "classifier.eqx",
        checkpoint_every=500, log_path=out / "logs" / "classifier.jsonl",
        progress=progress, description="classifier", position=position,
    )  # fmt: skip
    test_images = np.concatenate(
        list(sd.data.image_batches(test, 1000, shuffle=False, num_epochs=1, drop_remainder=False, with_labels=False))
    )  # fmt: skip
    logits, features = sd.metrics.classify(state.ema, test_images)
    accuracy = float(np.mean(np.argmax(logits, 1) == test.labels))
    tqdm.write(f"classifier: test accuracy {accuracy:.4f}")
    if accuracy < 0.99:
        tqdm.write(
            "warning: the classifier is below 99% test accuracy; train it longer"
        )
    return state.ema, accuracy, features


def train_model(name, classes, train, sde, out, preset, seed, progress, position=None):
    key = jax.random.key(seed)
    unet = make_unet(preset.unet, jax.random.fold_in(key, len(name)))
    optimizer = sd.train.make_optimizer(preset.lr, warmup_steps=preset.warmup_steps)
    state = sd.train.init_train_state(unet, optimizer, seed=seed)
    source = sd.data.select_classes(train, classes)
    batches = iter(
        sd.data.image_batches(source, preset.batch_size, seed=seed, with_labels=False)
    )
    grid_noise = jax.random.normal(jax.random.key(seed + 7), (16, 28, 28, 1))

    def grid(state):
        score = sd.EpsilonScore(state.ema, sde)
        x = sd.sample(
            score,
            sde,
            x_init=grid_noise,
            key=jax.random.key(1),
            num_steps=preset.num_steps,
        ).x
        step = int(state.step)
        save_grid(
            x,
            out / "grids" / name / f"step_{step:06d}.png",
            title=f"{name}, step {step}",
        )
        return None

    tic = time.perf_counter()
    state, _ = sd.train.fit(
        state, batches, sd.train.dsm_objective(sde, dropout=True), optimizer,
        preset.train_steps, ema_decay=0.999 if preset.train_steps > 5000 else 0.99,
        checkpoint_path=out / "checkpoints" / f"{name}.eqx",
        checkpoint_every=100, log_path=out / "logs" / f"{name}.jsonl",
        callback=grid, callback_every=preset.grid_every, progress=progress,
        description=name, position=position,
    )  # fmt: skip
    tqdm.write(
        f"{name}: trained to step {int(state.step)} ({time.perf_counter() - tic:.0f} s)"
    )
    return sd.EpsilonScore(state.ema, sde)


def evaluate(x, classifier, test_features):
    logits, features = sd.metrics.classify(classifier, x)
    histogram = sd.metrics.class_histogram(logits)
    return {
        "histogram": [round(float(h), 4) for h in histogram],
        "digits_covered": int(np.sum(histogram >= 0.02)),
        "share_0_4": float(histogram[:5].sum()),
        "tv_to_uniform": float(0.5 * np.abs(histogram - 0.1).sum()),
        "frechet": sd.metrics.frechet_distance(features, test_features),
        "confident": sd.metrics.confident_share(logits),
    }


def write_table(results: dict, meta: dict, path: Path) -> str:
    lines = [
        f"Samples per method: {meta['num_samples']}; Euler–Maruyama, "
        f"{meta['num_steps']} steps; classifier test accuracy "
        f"{meta['classifier_accuracy']:.4f}. Fréchet distance to the test set in "
        f"the classifier's features; floor (real training images vs test, same "
        f"sample size): {meta['frechet_floor']:.2f}.",
        "",
        "| method | digits covered | share of 0-4 | TV to uniform | Fréchet | "
        "confident | class shares 0..9 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        shares = " ".join(f"{100 * h:.0f}" for h in r["histogram"])
        lines.append(
            f"| {name} | {r['digits_covered']} | {r['share_0_4']:.3f} | "
            f"{r['tv_to_uniform']:.3f} | {r['frechet']:.2f} | {r['confident']:.3f} "
            f"| {shares} |"
        )
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    preset: Preset = args.config
    out, progress = args.out, not args.no_progress
    tic = time.perf_counter()
    # The data is looked for before anything is written.
    train = cli.load_data("mnist", "train", args.data_dir)
    test = cli.load_data("mnist", "test", args.data_dir)
    for sub in ("checkpoints", "logs", "grids"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    print(f"preset {args.preset}: {preset}")
    sde = sd.VPSDE()
    seed = args.seed
    n, keys = preset.num_samples, jax.random.split(jax.random.key(seed + 1000), 8)

    def sampling(label, operator, key):
        def job(*models, position=None):
            models = models[0] if len(models) == 1 else list(models)
            return draw(
                models, sde, operator, key=key, num=n, preset=preset, label=label,
                progress=progress, position=position,
            )  # fmt: skip

        return job

    # One job graph: the classifier and the three trainings, then each method's
    # sampling once the models it needs are trained. With two workers the pair's
    # samplings run beside the full model's training instead of after it.
    jobs: dict[str, Job] = {
        "classifier": Job(
            functools.partial(train_classifier, train, test, out, preset, seed, progress)
        )
    }  # fmt: skip
    for i, (name, classes) in enumerate([("low", LOW), ("high", HIGH), ("full", ALL)]):
        jobs[name] = Job(
            functools.partial(
                train_model, name, classes, train, sde, out, preset, seed + i, progress
            )
        )
    pair = ("low", "high")
    methods = [  # label, needs, operator, key index (2 is the random choice's)
        ("low (0-4)", ("low",), None, 0),
        ("high (5-9)", ("high",), None, 1),
        ("averaging", pair, sd.Average(), 3),
        ("SuperDiff OR (T=1)", pair, sd.Or(1.0), 4),
        ("SuperDiff OR (T=100)", pair, sd.Or(100.0), 5),
        ("SuperDiff AND", pair, sd.And(), 6),
        ("full model (0-9)", ("full",), None, 7),
    ]
    for label, needs, operator, k in methods:
        jobs[label] = Job(sampling(label, operator, keys[k]), needs)
    spans: dict[str, tuple[float, float]] = {}
    for name, job in jobs.items():
        jobs[name] = dataclasses.replace(job, fn=timed(job.fn, name, spans, tic))
    done = run_jobs(jobs, preset.workers)
    classifier, accuracy, test_features = done["classifier"]
    for name, (start, end) in spans.items():
        tqdm.write(f"{name}: {start:.0f}-{end:.0f} s")

    samples: dict[str, np.ndarray] = {}
    extra: dict[str, dict] = {}
    for label, _, operator, _ in methods:
        samples[label], log_q = done[label]
        if isinstance(operator, sd.And):
            assert log_q is not None
            gap = np.mean(np.abs(log_q[:, 0] - log_q[:, 1]))
            extra[label] = {"mean_abs_log_q_gap": float(gap)}
    # "low OR high" by random choice of model per sample: the i-th sample is the
    # i-th of the low or of the high model's (independent) samples by a fair coin.
    coin = np.asarray(jax.random.bernoulli(keys[2], 0.5, (n,)))[:, None, None, None]
    choice = np.where(coin, samples["low (0-4)"], samples["high (5-9)"])
    order = list(samples)
    order.insert(2, "random choice")
    samples = {
        name: choice if name == "random choice" else samples[name] for name in order
    }
    # The floor: real training images, as many as the generated samples, vs test.
    rng = np.random.default_rng(seed)
    real = train.gather(rng.choice(len(train), n, replace=False))
    floor = evaluate(
        real["image"].astype(np.float32) / 127.5 - 1, classifier, test_features
    )

    results = {}
    for name, x in samples.items():
        results[name] = {
            **evaluate(x, classifier, test_features),
            **extra.get(name, {}),
        }
        slug = name.split(" (")[0].lower().replace(" ", "_") + (
            "_t100" if "T=100" in name else ""
        )
        save_grid(x[:64], out / f"samples_{slug}.png", title=name)
    results["real training images"] = floor
    meta = {
        "preset": args.preset, **dataclasses.asdict(preset), "seed": args.seed,
        "classifier_accuracy": accuracy, "frechet_floor": floor["frechet"],
        "job_seconds": spans, "total_seconds": time.perf_counter() - tic,
    }  # fmt: skip
    (out / "results.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=2)
    )
    print(write_table(results, meta, out / "results.md"))
    title = (
        f"Split MNIST, preset {args.preset}: {preset.num_samples} samples per method, "
        f"{preset.num_steps} Euler–Maruyama steps\nUNets ({preset.unet}) trained "
        f"{preset.train_steps} steps; seed {args.seed}"
    )
    plot_summary(samples, results, out, title)
    cli.plot_training_grids(out, ("low", "high", "full"), dpi=120)
    print(f"wrote {out}/results.md, results.json, summary.png and training_grids.png")


def plot_summary(samples: dict, results: dict, out: Path, title: str):
    names = list(samples)
    fig, axes = plt.subplots(2, len(names), figsize=(2.2 * len(names), 4.6))
    for ax, name in zip(axes[0], names, strict=True):
        tiles = np.full((16, 28, 28), -1.0)  # black where there are < 16 samples
        shown = np.clip(samples[name][:16, ..., 0], -1, 1)
        tiles[: len(shown)] = shown
        grid = tiles.reshape(4, 4, 28, 28).transpose(0, 2, 1, 3).reshape(112, 112)
        ax.imshow((grid + 1) / 2, cmap="gray", vmin=0, vmax=1)
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()
    for ax, name in zip(axes[1], names, strict=True):
        ax.bar(range(10), results[name]["histogram"], color=["C0"] * 5 + ["C1"] * 5)
        ax.axhline(0.1, color="k", lw=0.5, ls="--")
        ax.set_xticks(range(10))
        ax.set_ylim(0, 0.5)
        ax.tick_params(labelsize=6)
        ax.set_title(f"Fréchet {results[name]['frechet']:.1f}", fontsize=8)
        ax.set_xlabel("digit (classifier)", fontsize=7)
    axes[1, 0].set_ylabel("share of samples", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "summary.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    cli.run(main)
