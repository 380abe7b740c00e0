"""The split-MNIST experiment end to end, on small synthetic MNIST files: it trains,
samples every method, scores them and writes its outputs; a rerun reuses the
finished models. The end-to-end run is slow (minutes of compilation): `-m slow`.
Its job scheduler, `run_jobs`, is tested in test_jobs.py."""

import json
import runpy
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import superdiff as sd
from test_images import _write_mnist


ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--train-steps", "2", "--batch-size", "8", "--warmup-steps", "1",
    "--classifier-steps", "2", "--num-samples", "12", "--sample-batch", "8",
    "--num-steps", "2", "--grid-every", "1", "--no-progress",
]  # fmt: skip


def _run(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "split_mnist.py"), *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
def test_split_mnist_runs_end_to_end_and_resumes(tmp_path):
    data, out = tmp_path / "mnist", tmp_path / "out"
    _write_mnist(data, "train", 200, compress=True)
    _write_mnist(data, "test", 50, compress=False, seed=1)

    log = _run("--data-dir", str(data), "--out", str(out), *TINY)
    results = json.loads((out / "results.json").read_text())
    methods = [
        "low (0-4)", "high (5-9)", "random choice", "averaging",
        "SuperDiff OR (T=1)", "SuperDiff OR (T=100)", "SuperDiff AND",
        "full model (0-9)", "real training images",
    ]  # fmt: skip
    assert list(results["results"]) == methods
    for name, r in results["results"].items():
        assert sum(r["histogram"]) == pytest.approx(1.0, abs=1e-3), name
        assert 0 <= r["share_0_4"] <= 1 and r["frechet"] >= 0
    assert results["meta"]["num_samples"] == 12
    assert "mean_abs_log_q_gap" in results["results"]["SuperDiff AND"]
    for name in (
        "results.md",
        "summary.png",
        "training_grids.png",
        "samples_superdiff_and.png",
    ):
        assert (out / name).is_file(), name
    for model in ("classifier", "low", "high", "full"):
        assert (out / "checkpoints" / f"{model}.eqx" / "step-00000002.ckpt").is_file()
    assert sorted(p.name for p in (out / "grids" / "low").iterdir()) == [
        "step_000001.png",
        "step_000002.png",
    ]
    assert "low: trained to step 2" in log

    # The rerun reuses every checkpoint: no model trains again, so the metrics logs
    # and the training grids are left as they were.
    logs = {p.name: p.read_text() for p in (out / "logs").iterdir()}
    grids = {p: p.stat().st_mtime_ns for p in (out / "grids").rglob("*.png")}
    _run("--data-dir", str(data), "--out", str(out), *TINY)
    assert {p.name: p.read_text() for p in (out / "logs").iterdir()} == logs
    assert {p: p.stat().st_mtime_ns for p in (out / "grids").rglob("*.png")} == grids


@pytest.mark.parametrize("preset", ["cpu", "gpu"])
def test_split_mnist_presets_build_a_trainable_unet(preset):
    # The GPU preset never runs in CI; trace (not compute) its UNet's loss and
    # gradients on a batch of its size, so a broken configuration fails here.
    module = runpy.run_path(str(ROOT / "experiments" / "split_mnist.py"))
    settings = module["PRESETS"][preset]
    unet = eqx.filter_eval_shape(
        module["make_unet"], settings.unet, key=jax.random.key(0)
    )
    batch = jax.ShapeDtypeStruct((settings.batch_size, 28, 28, 1), jnp.float32)
    loss_fn = sd.train.dsm_objective(sd.VPSDE(), dropout=True)
    loss, grads = eqx.filter_eval_shape(
        eqx.filter_value_and_grad(loss_fn), unet, batch, jax.random.key(1)
    )
    assert loss.shape == ()
    params = [
        leaf
        for leaf in jax.tree.leaves(unet)
        if jnp.issubdtype(getattr(leaf, "dtype", int), jnp.floating)
    ]
    assert [g.shape for g in jax.tree.leaves(grads)] == [p.shape for p in params]
    assert settings.num_samples % settings.sample_batch == 0
