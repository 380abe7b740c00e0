"""`experiments/split_cifar10.py`: its command line (a bad flag or missing data ends
it with exit status 2 before anything is written), its presets, and, `-m slow`, a
run end to end on small synthetic CIFAR-10 files that a rerun resumes."""

import json
import math
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import superdiff as sd
import superdiff.experiment as cli
from test_cli import _experiment
from test_images import _write_cifar_batch


ROOT = Path(__file__).resolve().parents[1]


def _write_cifar(folder: Path, n_train: int, n_test: int) -> None:
    """Two training batches and a test batch in `folder/cifar-10-batches-py/`:
    random pixels, labels 0-9 in turn."""
    rng = np.random.default_rng(0)
    batches = {"data_batch_1": n_train // 2, "data_batch_2": n_train - n_train // 2}
    for name, n in {**batches, "test_batch": n_test}.items():
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        _write_cifar_batch(
            folder / "cifar-10-batches-py" / name, images, np.arange(n) % 10
        )


@pytest.fixture
def no_compute(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("computation started before the flags were checked")

    monkeypatch.setattr(sd.train, "fit", refuse)
    monkeypatch.setattr(sd, "sample", refuse)
    monkeypatch.setattr(sd.data, "load_images", refuse)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--preset", "huge"], "--preset: invalid choice: 'huge' (choose from 'cpu', 'gpu', 'paper')"),
        (["--unet", "large"], "--unet: invalid choice: 'large' (choose from 'paper', 'small', 'tiny')"),
        (["--train-steps", "0"], "--train-steps must be a positive integer; got 0"),
        (["--ema-decay", "1.5"], "--ema-decay must be a probability in [0, 1]; got 1.5"),
        (["--lr", "nan"], "--lr must be a positive number; got nan"),
        (["--devices", "0"], "--devices must be a positive integer; got 0"),
        (["--devices", "999"], f"--devices must be at most the {jax.device_count()} device(s) present; got 999"),
    ],
)  # fmt: skip
def test_a_bad_flag_ends_it_before_any_work(
    argv, message, tmp_path, capsys, no_compute
):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        cli.run(_experiment("split_cifar10").main, ["--out", str(out), *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"split_cifar10.py: error: {message}"
    assert "Traceback" not in err
    assert not out.exists()


def test_missing_data_names_the_flag_before_anything_is_written(tmp_path, capsys):
    main = _experiment("split_cifar10").main
    out, empty = tmp_path / "out", tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as exit_info:
        cli.run(main, ["--data-dir", str(empty), "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("split_cifar10.py: error: No cifar10 'train' split found")
    assert "--data-dir" in err and "`data_dir`" not in err
    assert "data_batch_1" in err  # how to provide the data
    assert "Traceback" not in err
    assert not out.exists()


def test_show_preset_paper_is_the_papers_configuration(capsys):
    module = _experiment("split_cifar10")
    with pytest.raises(SystemExit):
        module.main(["--show-preset", "paper"])
    lines = capsys.readouterr().out.splitlines()
    for line in [
        "  --unet paper", "  --train-steps 500000", "  --batch-size 128",
        "  --lr 0.0002", "  --warmup-steps 5000", "  --grad-clip 1.0",
        "  --ema-decay 0.9999", "  --horizontal-flip True", "  --num-steps 200",
        "  --num-samples 50000", "  --fid True",
    ]:  # fmt: skip
        assert line in lines
    assert len(lines) == 1 + len(module.Preset.__dataclass_fields__)


@pytest.mark.parametrize("preset", ["cpu", "gpu", "paper"])
def test_presets_build_a_trainable_unet(preset):
    # Trace (not compute) each preset's UNet loss and gradients on a batch of its
    # size, so a broken configuration fails here; the paper's is UNet.cifar10.
    module = _experiment("split_cifar10")
    settings = module.PRESETS[preset]
    unet = eqx.filter_eval_shape(module.make_unet, settings.unet, jax.random.key(0))
    count = sum(
        math.prod(x.shape)
        for x in jax.tree.leaves(unet)
        if isinstance(x, jax.ShapeDtypeStruct)
    )
    if settings.unet == "paper":
        assert count == 37_061_891
    batch = jax.ShapeDtypeStruct((settings.batch_size, 32, 32, 3), jnp.float32)
    loss_fn = sd.train.dsm_objective(sd.VPSDE(), dropout=True)
    loss, _ = eqx.filter_eval_shape(
        eqx.filter_value_and_grad(loss_fn), unet, batch, jax.random.key(1)
    )
    assert loss.shape == ()


def test_slug_names_each_method_apart():
    slug = _experiment("split_cifar10").slug
    names = [
        "A (0-4)", "B (5-9)", "random choice", "averaging", "SuperDiff OR (T=1)",
        "SuperDiff OR (T=100)", "SuperDiff OR (T=10^6)", "SuperDiff AND",
        "union model (0-9)",
    ]  # fmt: skip
    slugs = [slug(n) for n in names]
    assert len(set(slugs)) == len(names)
    assert slugs[6] == "superdiff_or_t106"


TINY = [
    "--unet", "tiny", "--train-steps", "2", "--batch-size", "4", "--warmup-steps",
    "1", "--classifier-steps", "2", "--num-samples", "6", "--sample-batch", "4",
    "--num-steps", "2", "--grid-every", "1", "--no-progress", "--devices", "1",
    "--fid",
]  # fmt: skip


def _run(*args: str) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "split_cifar10.py"), *args],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    return out


@pytest.mark.slow
def test_split_cifar10_runs_end_to_end_and_resumes(tmp_path):
    data, out = tmp_path / "cifar", tmp_path / "out"
    _write_cifar(data, 60, 30)
    # A partial copy: two of the five training batches, with a warning.
    fid_cache = ["--fid-cache", str(tmp_path / "fid")]  # not the user's cache
    run = _run("--data-dir", str(data), "--out", str(out), *TINY, *fid_cache)
    assert "found 2 of 5 training batches" in run.stderr
    results = json.loads((out / "results.json").read_text())
    methods = [
        "A (0-4)", "B (5-9)", "random choice", "averaging", "SuperDiff OR (T=1)",
        "SuperDiff OR (T=100)", "SuperDiff OR (T=10^6)", "SuperDiff AND",
        "union model (0-9)", "real training images",
    ]  # fmt: skip
    assert list(results["results"]) == methods
    for name, r in results["results"].items():
        # Every method samples, OR at T = 10^6 too (its log-densities are
        # thousands of nats: `Or` must not lose them to float32 rounding).
        assert "failed" not in r, (name, r)
        assert sum(r["histogram"]) == pytest.approx(1.0, abs=1e-3), name
        assert 0 <= r["share_0_4"] <= 1 and r["frechet"] >= 0
    assert results["meta"]["num_samples"] == 6 and results["meta"]["train_images"] == 60
    assert "mean_abs_log_q_gap" in results["results"]["SuperDiff AND"]
    fid_installed = True
    try:
        sd.metrics.inception_weights_path()
    except sd.metrics.MissingWeightsError:
        fid_installed = False
    if not fid_installed:
        assert "FID skipped" in run.stdout
        assert all(r.get("fid") is None for r in results["results"].values())
    table = (out / "results.md").read_text()
    assert all(f"| {m} |" in table for m in methods)
    for name in ("summary.png", "training_grids.png", "samples_superdiff_or_t100.png",
                 "samples_random_choice.png", "samples_union_model.png"):  # fmt: skip
        assert (out / name).is_file(), name
    for model in ("classifier", "A", "B", "union"):
        assert (out / "checkpoints" / f"{model}.eqx" / "step-00000002.ckpt").is_file()
    assert sorted(p.name for p in (out / "grids" / "A").iterdir()) == [
        "step_000001.png", "step_000002.png",
    ]  # fmt: skip
    assert "A: trained to step 2" in run.stdout

    # The rerun reuses every checkpoint: no model trains again.
    logs = {p.name: p.read_text() for p in (out / "logs").iterdir()}
    grids = {p: p.stat().st_mtime_ns for p in (out / "grids").rglob("*.png")}
    _run("--data-dir", str(data), "--out", str(out), *TINY, *fid_cache)
    assert {p.name: p.read_text() for p in (out / "logs").iterdir()} == logs
    assert {p: p.stat().st_mtime_ns for p in (out / "grids").rglob("*.png")} == grids


def test_save_grid_tiles_grey_and_colour(tmp_path):
    grey = -np.ones((3, 4, 5, 1))
    canvas = cli.tile(grey, 2)
    assert canvas.shape == (2 * 5 + 1, 2 * 6 + 1, 1)
    assert canvas[1, 1, 0] == 0 and canvas[0, 0, 0] == 1  # image black, border white
    assert np.all(canvas[6:10, 7:12] == 1)  # the missing fourth tile is white
    colour = np.zeros((2, 4, 4, 3))
    colour[..., 0] = 1  # red
    assert np.allclose(cli.tile(colour, 2)[1, 1], [1, 0.5, 0.5])
    for images in (grey, colour):
        path = tmp_path / f"g{images.shape[-1]}" / "grid.png"
        cli.save_grid(images, path, columns=2, title="t")
        assert path.stat().st_size > 0
    with pytest.raises(ValueError, match="non-empty batch"):
        cli.tile(np.zeros((0, 4, 4, 3)), 2)
