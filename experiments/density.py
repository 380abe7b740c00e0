"""Density estimation and density guidance on exact mixtures and on two moons.

Writes `density.png` and `metrics.json` to `--out` (default `outputs/density/`):

1. Tracking: on a 2-D Gaussian mixture with exact scores, the log q_0 tracked along
   the reverse SDE (Itô and kernel-ratio estimators) and the PF-ODE's estimate for
   the same samples, against the exact value; on the two-moons model (trained on
   both moons), the Itô-tracked log q_0 against the model's PF-ODE log-density.
2. Guidance: how density guidance (deterministic and stochastic), prior guidance
   and high-density sampling move log p_0 — exactly on a 16-D mixture, and by the
   PF-ODE on the two-moons model.

    uv run experiments/density.py                  # a few CPU minutes
    uv run experiments/density.py --help

The two-moons model is `experiments/two_moons.py`'s union model when its checkpoint
is in `--two-moons-dir/checkpoints/union.eqx` (read only); otherwise a model of the
same configuration is trained into `<out>/checkpoints/union.eqx`.
"""

import argparse
import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from statistics import NormalDist
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import superdiff as sd  # noqa: E402
import superdiff.experiment as cli  # noqa: E402


def _log_prob(score, sde, x):
    """The PF-ODE log-density of each example, `(n,)`."""
    out = sd.log_prob_ode(score, sde, x)
    assert out.log_q is not None
    return out.log_q[:, 0]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = cli.ExperimentParser(description=__doc__, prog=Path(__file__).name)
    p.add_argument(
        "--out", type=cli.output_dir, default=Path("outputs/density"),
        help="output folder; a model trained here is checkpointed in <out>/checkpoints/",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of data, model, noise")
    p.add_argument(
        "--two-moons-dir", type=Path, default=Path("outputs/two_moons"),
        help="two_moons.py's --out, whose checkpoints/union.eqx is used if present",
    )  # fmt: skip
    p.add_argument(
        "--train-steps", type=cli.positive_int, default=6000,
        help="training steps of the two-moons model if no checkpoint is found",
    )  # fmt: skip
    p.add_argument(
        "--num-samples", type=cli.positive_int, default=1000, help="tracking runs"
    )
    p.add_argument(
        "--num-steps", type=cli.positive_int, default=500, help="reverse-SDE steps"
    )
    p.add_argument(
        "--guidance-samples", type=cli.positive_int, default=300,
        help="samples per guidance setting",
    )  # fmt: skip
    p.add_argument(
        "--guidance-steps", type=cli.positive_int, default=200,
        help="fixed Heun steps of the guided ODEs",
    )  # fmt: skip
    p.add_argument(
        "--no-progress", action="store_true", help="no progress bars or lines"
    )
    return p.parse_args(argv)


# ------------------------------------------------------------------ models


def union_model(args, sde) -> tuple[sd.EpsilonScore, dict]:
    """two_moons.py's union model (width 128, depth 3, lr 2e-3, 200 warm-up
    steps, batch 256, 20 000 points of both moons from its seed's third key)."""
    network = sd.nn.MLP(2, width=128, depth=3, key=jax.random.key(0))
    optimizer = sd.train.make_optimizer(2e-3, warmup_steps=200)
    state = sd.train.init_train_state(network, optimizer, seed=args.seed)
    shared = args.two_moons_dir / "checkpoints" / "union.eqx"
    if shared.exists():  # a folder of checkpoints written by `fit`
        try:
            state, _ = sd.train.load_checkpoint(shared, state)
            info = {"source": str(shared), "train_steps": int(state.step)}
            return sd.EpsilonScore(state.ema, sde), info
        except sd.train.CheckpointError as err:
            print(f"not using {shared}: {err}")
    data = sd.data.two_moons(
        20_000, key=jax.random.split(jax.random.key(args.seed), 10)[2], moon="both"
    )
    state, _ = sd.train.fit(
        state,
        sd.train.ArraySampler(data, 256),
        sd.train.dsm_objective(sde),
        optimizer,
        args.train_steps,
        checkpoint_path=args.out / "checkpoints" / "union.eqx",
        checkpoint_every=2000,
        log_every=500,
        progress=not args.no_progress,
        description="train union",
    )
    info = {"source": "trained here", "train_steps": int(state.step)}
    return sd.EpsilonScore(state.ema, sde), info


def mixture_2d(sde) -> sd.GaussianMixture:
    means = np.array([[-1.2, 0.0], [1.0, 0.8], [0.8, -1.0]])
    variances = np.array([[0.15, 0.3], [0.2, 0.1], [0.3, 0.2]])
    return sd.GaussianMixture(means, variances, sde, weights=np.array([0.5, 0.3, 0.2]))


def mixture_16d(sde) -> sd.GaussianMixture:
    rng = np.random.default_rng(16)
    means = rng.choice([-1.0, 1.0], size=(3, 16)) * 0.8
    variances = rng.uniform(0.1, 0.4, size=(3, 16))
    return sd.GaussianMixture(means, variances, sde)


@eqx.filter_jit
def exact_log_q(model, t, x):
    return jax.vmap(lambda v: model.log_prob(t, v))(x)


def stats(err) -> dict:
    err = np.asarray(err)
    return {"mean": float(err.mean()), "std": float(err.std())}


# ------------------------------------------------------------------ tracking


def tracking(args, sde, gmm, union, keys) -> dict:
    n, steps = args.num_samples, args.num_steps
    x1 = gmm.sample(n, sde.t_max, key=keys[0])
    lq1 = exact_log_q(gmm, sde.t_max, x1)[:, None]
    out = {}
    for name, estimator in [
        ("ito", sd.ItoEstimator()),
        ("kernel_ratio", sd.KernelRatioEstimator()),
    ]:
        s = sd.sample(
            gmm.score, sde, key=keys[1], x_init=x1, num_steps=steps,
            spacing="log_snr", track_density=True, estimator=estimator,
            log_q_init=lq1,
        )  # fmt: skip
        assert s.log_q is not None
        out[name] = {"x": s.x, "tracked": s.log_q[:, 0]}
    x = out["ito"]["x"]
    exact = exact_log_q(gmm, sde.t_min, x)
    pf = _log_prob(gmm.score, sde, x)
    gmm_result = {
        "exact": exact,
        "ito": out["ito"]["tracked"],
        "kernel_ratio": out["kernel_ratio"]["tracked"],
        "kernel_ratio_exact": exact_log_q(gmm, sde.t_min, out["kernel_ratio"]["x"]),
        "pf_ode": pf,
    }
    # Two moons: Itô tracked from the prior's log-density, against the model's own
    # PF-ODE log-density (exact divergence, adaptive) at the same samples.
    s = sd.sample(
        union, sde, key=keys[2], num_samples=n, shape=(2,), num_steps=steps,
        spacing="log_snr", track_density=True,
    )  # fmt: skip
    assert s.log_q is not None
    moons_pf = _log_prob(union, sde, s.x)
    moons = {"x": s.x, "ito": s.log_q[:, 0], "pf_ode": moons_pf}
    return {"gmm": gmm_result, "moons": moons}


# ------------------------------------------------------------------ guidance


def guidance_sweeps(args, sde, score, log_p0, x1, key) -> dict:
    """Mean log p_0 under each guidance; `log_p0(x)` measures it."""
    steps = args.guidance_steps
    fixed: dict[str, Any] = dict(num_steps=steps, solver=dfx.Heun())
    # Guidance steps uniform in the log-SNR, as Karczewski et al. step (docs/math.md
    # §6); the PF-ODE baselines on every sampler's default grid, uniform in t.
    guided: dict[str, Any] = dict(fixed, spacing="log_snr")
    pf_x = sd.sample_ode(score, sde, x_init=x1, **fixed).x
    base = float(jnp.mean(log_p0(pf_x)))
    median = sd.prior_guidance(sde, x1, 0.5)
    result: dict = {"pf_ode": base, "density": {}, "stochastic": {}, "prior": {}}
    result["hd"] = {}
    for q in args.quantiles:
        x = sd.sample_density_guided(
            score, sde, sd.DensityQuantile(q), x_init=median, **guided
        ).x
        result["density"][q] = float(jnp.mean(log_p0(x)))
        x = sd.sample_density_guided(
            score, sde, sd.DensityQuantile(q), x_init=median, noise=0.3,
            num_steps=4 * steps, spacing="log_snr", key=key,
        ).x  # fmt: skip
        result["stochastic"][q] = float(jnp.mean(log_p0(x)))
    for q in (0.05, 0.25, 0.5, 0.75, 0.95):
        x = sd.sample_prior_guided(score, sde, q, x_init=x1, **fixed).x
        result["prior"][q] = float(jnp.mean(log_p0(x)))
    for t_switch in args.switches:
        x = sd.sample_high_density(score, sde, x_init=x1, t_switch=t_switch, **guided).x
        result["hd"][t_switch] = float(jnp.mean(log_p0(x)))
    alignment = sd.score_alignment(score, sde, x1).extras["alignment"]
    result["score_alignment_positive_share"] = float(jnp.mean(alignment > 0))
    return result


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    # The model is trained (or was, by two_moons.py) in float32; the densities are
    # compared in float64, so the weights are cast after loading.
    union, union_info = union_model(args, sd.VPSDE())
    jax.config.update("jax_enable_x64", True)
    sde = sd.VPSDE()
    union = sd.EpsilonScore(
        jax.tree.map(
            lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a,
            union.network,
        ),
        sde,
    )
    keys = jax.random.split(jax.random.key(args.seed), 8)
    gmm, gmm16 = mixture_2d(sde), mixture_16d(sde)

    track = tracking(args, sde, gmm, union, keys[:3])
    print("tracking done", f"{time.perf_counter() - tic:.0f} s")

    span = float(sde.log_snr(sde.t_min) - sde.log_snr(sde.t_max))
    args.switches = [sde.t_min, 0.05, 0.1, 0.2, 0.4, 0.7]
    args.quantiles = [0.1, 0.2, 0.3, 0.4, 0.5, 0.52, 0.55, 0.58, 0.6]
    noise16 = jax.random.normal(keys[3], (args.guidance_samples, 16))
    sweep16 = guidance_sweeps(
        args, sde, gmm16.score, lambda x: exact_log_q(gmm16, sde.t_min, x), noise16,
        keys[4],
    )  # fmt: skip
    print("16-D guidance done", f"{time.perf_counter() - tic:.0f} s")
    # Two moons (d = 2): only q near 0.5 can raise log p_0 (see docs/density.md).
    args.quantiles = [0.2, 0.3, 0.4, 0.45, 0.5, 0.51, 0.52]
    noise2 = jax.random.normal(keys[5], (args.guidance_samples, 2))
    sweep2 = guidance_sweeps(
        args, sde, union, lambda x: _log_prob(union, sde, x), noise2,
        keys[6],
    )  # fmt: skip
    print("two-moons guidance done", f"{time.perf_counter() - tic:.0f} s")
    fixed: dict[str, Any] = dict(num_steps=args.guidance_steps, solver=dfx.Heun())
    guided: dict[str, Any] = dict(fixed, spacing="log_snr")
    moons_samples = {
        "PF-ODE": sd.sample_ode(union, sde, x_init=noise2, **fixed).x,
        "density guidance q = 0.3": sd.sample_density_guided(
            union,
            sde,
            sd.DensityQuantile(0.3),
            x_init=sd.prior_guidance(sde, noise2, 0.5),
            **guided,
        ).x,  # fmt: skip
        "high density, t_switch = 0.2": sd.sample_high_density(
            union, sde, x_init=noise2, t_switch=0.2, **guided
        ).x,
    }

    g, m = track["gmm"], track["moons"]
    metrics = {
        "config": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
        },
        "two_moons_model": union_info,
        "log_snr_span": span,
        "tracking_gmm_2d": {
            "ito_minus_exact": stats(g["ito"] - g["exact"]),
            "kernel_ratio_minus_exact": stats(
                g["kernel_ratio"] - g["kernel_ratio_exact"]
            ),
            "pf_ode_minus_exact_same_samples_as_ito": stats(g["pf_ode"] - g["exact"]),
        },
        "tracking_two_moons": {
            "ito_minus_pf_ode": stats(m["ito"] - m["pf_ode"]),
            "correlation": float(np.corrcoef(m["ito"], m["pf_ode"])[0, 1]),
        },
        "guidance_gmm_16d_exact_mean_log_p0": sweep16,
        "guidance_two_moons_pf_ode_mean_log_p0": sweep2,
        "seconds": time.perf_counter() - tic,
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    title = (
        f"Density: tracking {args.num_samples} samples, {args.num_steps} "
        f"Euler–Maruyama steps; guidance {args.guidance_samples} samples, "
        f"{args.guidance_steps} Heun steps\ntwo-moons model: {union_info['source']}, "
        f"{union_info['train_steps']} training steps; seed {args.seed}"
    )
    plot(track, sweep16, sweep2, moons_samples, span, args.out / "density.png", title)
    print(json.dumps({k: metrics[k] for k in list(metrics)[2:6]}, indent=2))
    print(f"wrote {args.out / 'metrics.json'} and {args.out / 'density.png'}")


# ------------------------------------------------------------------ figure


def plot(
    track, sweep16, sweep2, moons_samples, span, path: Path, suptitle: str
) -> None:
    fig, axes = plt.subplots(2, 3, figsize=(15, 9.5))
    g, m = track["gmm"], track["moons"]

    ax = axes[0, 0]
    lo, hi = float(np.min(g["exact"])), float(np.max(g["exact"]))
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.scatter(g["exact"], g["ito"], s=3, alpha=0.4, label="Itô (tracked)")
    ax.scatter(
        g["kernel_ratio_exact"], g["kernel_ratio"], s=3, alpha=0.4,
        label="kernel ratio (tracked)",
    )  # fmt: skip
    ax.scatter(g["exact"], g["pf_ode"], s=3, alpha=0.6, label="PF-ODE, same samples")
    ax.set(xlabel="exact log q_0", ylabel="estimate", title="2-D mixture: log q_0")
    ax.legend(fontsize=8, markerscale=3)

    ax = axes[0, 1]
    lo, hi = float(np.min(m["pf_ode"])), float(np.max(m["pf_ode"]))
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.scatter(m["pf_ode"], m["ito"], s=3, alpha=0.4)
    ax.set(
        xlabel="model's PF-ODE log q_0 (exact divergence)",
        ylabel="Itô-tracked log q_0",
        title="two-moons model: same samples",
    )

    ax = axes[0, 2]
    for name, x in moons_samples.items():
        ax.scatter(*np.asarray(x).T, s=3, alpha=0.5, label=name)
    ax.set(
        xlim=(-3, 3), ylim=(-2.2, 2.2), aspect="equal", title="two-moons samples",
        xlabel="$x_1$", ylabel="$x_2$",
    )  # fmt: skip
    ax.legend(fontsize=8, markerscale=3, loc="lower left")

    for ax, sweep, title, d in [
        (axes[1, 0], sweep16, "16-D mixture: exact mean log p_0", 16),
        (axes[1, 1], sweep2, "two moons: mean log p_0 (model, PF-ODE)", 2),
    ]:
        qs = sorted(sweep["density"])
        ax.plot(qs, [sweep["density"][q] for q in qs], "o-", label="density guidance")
        ax.plot(
            qs, [sweep["stochastic"][q] for q in qs], "s--",
            label="stochastic guidance (noise 0.3 g)",
        )  # fmt: skip
        ref = sweep["density"][0.5]
        ax.plot(
            qs,
            [ref + 0.5 * math.sqrt(2 * d) * NormalDist().inv_cdf(q) * span for q in qs],
            "k:",
            label="PF-ODE + ½√(2d) Φ⁻¹(q) Δλ",
        )
        pq = sorted(sweep["prior"])
        ax.plot(pq, [sweep["prior"][q] for q in pq], "^-", label="prior guidance")
        ax.axhline(sweep["pf_ode"], color="gray", lw=0.8, label="PF-ODE")
        lows = [sweep["density"][q] for q in qs] + [sweep["prior"][q] for q in pq]
        ax.set_ylim(min(lows) - 1, max(lows) + 2)
        ax.set(xlabel="quantile q", ylabel="mean log p_0", title=title)
        ax.legend(fontsize=8)

    ax = axes[1, 2]
    for sweep, label in [(sweep16, "16-D mixture (exact)"), (sweep2, "two moons")]:
        ts = sorted(sweep["hd"])
        ax.plot(ts, [sweep["hd"][t] - sweep["pf_ode"] for t in ts], "o-", label=label)
    ax.set(
        xlabel="switch time t (PF-ODE before, HD-ODE after)",
        ylabel="mean log p_0 − PF-ODE's",
        title="high-density sampling",
    )
    ax.legend(fontsize=8)
    fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    cli.run(main)
