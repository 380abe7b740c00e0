"""How accurate each log-density estimator is, and what it costs, on exact mixtures.

    uv run benchmarks/density_accuracy.py                 # the tracked-density table
    uv run benchmarks/density_accuracy.py --pf-ode        # and the PF-ODE comparison
    uv run benchmarks/density_accuracy.py --pf-ode --dims 2 --num-samples 500

**The tracked-density table** (the default): the error of the log q tracked along
the reverse SDE by `sample` (Euler–Maruyama, started at exact samples of q_{t_max}
with the exact log q_{t_max}) against the exact log q_{t_min} at the sample it
ends on, mean ± standard error of the mean, for VP and VE, 100 and 1000 steps, on
four two-component mixtures: d = 2 isotropic (variance 0.1), d = 2 anisotropic
(variances 0.02 / 1.5), d = 784 with variance 0.1 ("broad") and d = 784 with
variance 0.001 ("thin": most of log q comes from the last noise levels, as for
images). Rows: the Itô estimator (Eq. 90) and the kernel ratio (Eq. 89) on steps
uniform in t, the kernel ratio with its curvature correction (`docs/math.md`
(3.8), (3.9)) on steps uniform in t and in the log-SNR (the default of `sample` when it
tracks). Under VE the log-SNR is linear in t, so the two grids coincide.

**The PF-ODE comparison** (`--pf-ode`):

For a two-component Gaussian mixture with diagonal covariances (`GaussianMixture`,
exact log q_t and score) under the VP SDE, it reports the error of the estimated
log q at t_min = 1e-3 against the exact value (mean ± std over samples, nats), the
wall time of one batch (compiled ahead of time, so compilation is excluded) and the
number of vector-field evaluations (NFE) and of network passes (a score evaluation
or one JVP each), for:

- the Itô estimator (Skreta et al. Eq. 90) and the kernel-ratio estimator (Eq. 89)
  along the reverse SDE with Euler–Maruyama, started at exact samples of q_{t_max}
  with the exact log q_{t_max} (density tracking needs Euler; docs/math.md §3);
- the PF-ODE likelihood (`log_prob_ode`) on exact samples of q_{t_min}: exact
  divergence and Hutchinson with 1 and 4 Rademacher probes, with fixed steps (Euler,
  Heun) and adaptive (Dopri5 + PIDController(rtol=atol=1e-5)). Its prior term is
  replaced by the exact log q_{t_max} at the latent, so that every row is measured
  against the same exact answer and shows only its own integration error; the
  prior's own mismatch is reported separately.

Then, on the same samples (those the Itô estimator tracked at the finest step), the
Itô estimate against the PF-ODE's.

At d = 784 the exact divergence is 784 JVPs per evaluation, so those rows use
`--exact-samples-784` samples (default 20) and only the coarser step counts.
"""

import argparse
import time
from collections.abc import Callable
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import superdiff as sd


def mixture(dim: int, sde: sd.AbstractSDE) -> sd.GaussianMixture:
    if dim == 2:
        means = np.array([[1.0, 0.5], [-1.0, -0.5]])
        variances = np.array([[0.3, 0.2], [0.2, 0.4]])
    else:
        rng = np.random.default_rng(0)
        means = rng.uniform(-0.5, 0.5, (2, dim))
        variances = rng.uniform(0.1, 0.5, (2, dim))
    return sd.GaussianMixture(means, variances, sde)


class Counted(eqx.Module):
    """A score that counts its calls (per example, under vmap) in `COUNT`."""

    score: Callable

    def __call__(self, t, x):
        jax.debug.callback(_tick, x[0], ordered=False)
        return self.score(t, x)


COUNT = [0]


def _tick(_):
    COUNT[0] += 1


def timed(fn, *args) -> tuple[Any, float]:
    """Compile `fn` ahead of time, then time one call (the fastest of two when the
    call is short)."""
    compiled = jax.jit(fn).lower(*args).compile()
    tic = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    seconds = time.perf_counter() - tic
    if seconds < 2.0:
        tic = time.perf_counter()
        out = jax.block_until_ready(compiled(*args))
        seconds = min(seconds, time.perf_counter() - tic)
    return out, seconds


def tracked(g, sde, estimator, num_steps):
    """Reverse SDE with the tracked log q (Euler–Maruyama), as `sample` runs it."""

    def run(x1, lq1, key):
        term = sd.SuperpositionTerm(
            sde, sd.score_family(g.score), sd.Single(),
            dfx.UnsafeBrownianPath(x1.shape, key), estimator=estimator,
        )  # fmt: skip
        span = sde.t_max - sde.t_min
        sol = dfx.diffeqsolve(
            term, dfx.Euler(), t0=0.0, t1=span, dt0=span / num_steps,
            y0=term.init(x1, lq1[:, None]), adjoint=dfx.ForwardMode(),
            max_steps=num_steps + 1, saveat=dfx.SaveAt(t1=True),
        )  # fmt: skip
        assert sol.ys is not None
        end = jax.tree.map(lambda leaf: leaf[-1], sol.ys)
        return end.x, term.finish(span, end)[:, 0]

    return run


def pf_ode(g, sde, score, divergence, solver, num_steps, controller):
    def run(x, key):
        out = sd.log_prob_ode(
            score, sde, x, divergence=divergence, key=key, solver=solver,
            num_steps=num_steps, stepsize_controller=controller,
        )  # fmt: skip
        assert out.log_q is not None
        log_p, z = out.log_q[:, 0], out.x
        # Replace the prior's log-density by the exact log q_{t_max}(z).
        prior = jax.vmap(sde.prior_log_prob)(z)
        exact_end = jax.vmap(lambda v: g.log_prob(sde.t_max, v))(z)
        return log_p - prior + exact_end, prior - exact_end

    return run


def count_nfe(g, sde, divergence, solver, controller, x, key) -> float:
    COUNT[0] = 0
    run = pf_ode(g, sde, Counted(g.score), divergence, solver, None, controller)
    jax.block_until_ready(jax.jit(run)(x, key))
    jax.effects_barrier()
    return COUNT[0] / x.shape[0]


def fmt_err(err) -> str:
    err = np.asarray(err)
    return f"{err.mean():+.3f} ± {err.std():.3f}"


TRACKED_CASES = {
    "d = 2, isotropic": (2, 0.1),
    "d = 2, anisotropic": (2, (0.02, 1.5)),
    "d = 784, broad": (784, 0.1),
    "d = 784, thin": (784, 1e-3),
}
TRACKED_ROWS = [
    ("Itô, t-uniform", sd.ItoEstimator(), "t"),
    ("kernel ratio (Eq. 89), t-uniform", sd.KernelRatioEstimator(False), "t"),
    ("kernel ratio + correction, t-uniform", sd.KernelRatioEstimator(), "t"),
    ("kernel ratio + correction, log-SNR", sd.KernelRatioEstimator(), "log_snr"),
]


def tracked_mixture(dim: int, variance, sde: sd.AbstractSDE) -> sd.GaussianMixture:
    if dim == 2:
        means = np.array([[1.0, 0.5], [-1.0, -0.5]])
    else:
        means = np.random.default_rng(0).uniform(-0.5, 0.5, (2, dim))
    variances = np.broadcast_to(np.asarray(variance, float), (2, dim))
    return sd.GaussianMixture(means, variances, sde)


def tracked_error(g, sde, estimator, spacing, steps):
    """`sample` with the tracked log q, minus the exact log q where it ends."""

    def run(x1, lq1, key):
        out = sd.sample(
            g.score, sde, key=key, x_init=x1, log_q_init=lq1, track_density=True,
            estimator=estimator, spacing=spacing, num_steps=steps,
        )  # fmt: skip
        assert out.log_q is not None
        exact = exact_log_q(g, sde.t_min, out.x)
        return out.log_q[:, 0] - exact, exact

    return run


def tracked_table(args: argparse.Namespace) -> None:
    print(
        "\n## Tracked log q: error at t_min (nats), mean ± standard error"
        " (d = 784: and in % of the mean |log q| at the samples)\n"
    )
    for sde_name, sde in [("VP", sd.VPSDE()), ("VE", sd.VESDE())]:
        print(f"\n### {sde_name} (t_min = {sde.t_min})\n")
        head = " | ".join(f"{n} steps" for n in args.tracked_steps)
        print(f"| case | estimator, steps | {head} |")
        print("|---|---|" + "---|" * len(args.tracked_steps))
        for case, (dim, variance) in TRACKED_CASES.items():
            g = tracked_mixture(dim, variance, sde)
            n = args.tracked_samples if dim <= 64 else args.tracked_samples_784
            key_x, key = jax.random.split(jax.random.key(dim))
            x1 = g.sample(n, sde.t_max, key=key_x)
            lq1 = exact_log_q(g, sde.t_max, x1)[:, None]
            for label, estimator, spacing in TRACKED_ROWS:
                if sde_name == "VE" and spacing == "log_snr":
                    continue  # log-SNR is linear in t: the row above
                cells = []
                for steps in args.tracked_steps:
                    run = tracked_error(g, sde, estimator, spacing, steps)
                    (err, exact), _ = timed(run, x1, lq1, key)
                    err = np.asarray(err)
                    mean, se = err.mean(), err.std() / np.sqrt(n)
                    cell = f"{mean:+.4f} ± {se:.4f}"
                    if dim > 64:
                        scale = float(np.mean(np.abs(exact)))
                        cell += f" ({100 * mean / scale:+.3f} %)"
                    cells.append(cell)
                print(f"| {case} | {label} | " + " | ".join(cells) + " |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--pf-ode", action="store_true", help="also the PF-ODE table")
    p.add_argument("--tracked-steps", type=int, nargs="+", default=[100, 1000])
    p.add_argument("--tracked-samples", type=int, default=4000)
    p.add_argument("--tracked-samples-784", type=int, default=200)
    p.add_argument("--dims", type=int, nargs="+", default=[2, 784])
    p.add_argument("--num-samples", type=int, default=1000)
    p.add_argument("--exact-samples-784", type=int, default=20)
    p.add_argument("--steps", type=int, nargs="+", default=[100, 400, 1600])
    p.add_argument("--exact-steps-784", type=int, nargs="+", default=[100, 400])
    args = p.parse_args()
    jax.config.update("jax_enable_x64", True)
    print(f"backend {jax.default_backend()}, float64")
    tracked_table(args)
    if not args.pf_ode:
        return
    sde = sd.VPSDE()
    print(f"\n## PF-ODE and tracked, VP SDE, t_min = {sde.t_min}")
    for dim in args.dims:
        report(dim, sde, args)


def exact_log_q(g, t, x):
    return jax.vmap(lambda v: g.log_prob(t, v))(x)


def report(dim: int, sde: sd.AbstractSDE, args: argparse.Namespace) -> None:
    g = mixture(dim, sde)
    n = args.num_samples
    keys = jax.random.split(jax.random.key(dim), 5)
    x1 = g.sample(n, sde.t_max, key=keys[0])
    lq1 = exact_log_q(g, sde.t_max, x1)
    x0 = g.sample(n, sde.t_min, key=keys[1])
    exact0 = exact_log_q(g, sde.t_min, x0)
    n_exact = n if dim <= 64 else min(n, args.exact_samples_784)
    exact_steps = args.steps if dim <= 64 else args.exact_steps_784
    print(f"\n### d = {dim}: error of log q at t = {sde.t_min} (nats)\n")
    print(
        f"{n} samples per row ({n_exact} for the exact-divergence rows); "
        f"|log q| ≈ {float(jnp.mean(jnp.abs(exact0))):.0f} nats. "
        "Cost: milliseconds per batch / NFE / network passes per sample.\n"
    )
    print("| estimator | steps | error (mean ± std) | ms / batch | NFE | passes |")
    print("|---|---|---|---|---|---|")

    ito_samples = ito_err = None
    for name, estimator in [
        ("Itô, Euler–Maruyama", sd.ItoEstimator()),
        ("kernel ratio + correction, Euler–Maruyama", sd.KernelRatioEstimator()),
    ]:
        for steps in args.steps:
            (x, lq), seconds = timed(
                tracked(g, sde, estimator, steps), x1, lq1, keys[2]
            )
            err = lq - exact_log_q(g, sde.t_min, x)
            print(
                f"| {name} | {steps} | {fmt_err(err)} | {seconds * 1e3:.0f} | "
                f"{steps} | {steps} |"
            )
            if name.startswith("Itô") and steps == max(args.steps):
                ito_samples, ito_err = x, err

    rows = []
    for div_name, div, jvps in [
        ("exact divergence", sd.ExactDivergence(), dim),
        ("Hutchinson, 1 probe", sd.Hutchinson(1), 1),
        ("Hutchinson, 4 probes", sd.Hutchinson(4), 4),
    ]:
        exact_div = isinstance(div, sd.ExactDivergence)
        m = n_exact if exact_div else n
        solvers: list[tuple[str, dfx.AbstractSolver, int]] = (
            [("Euler", dfx.Euler(), 1)] if exact_div else []
        )
        solvers.append(("Heun", dfx.Heun(), 2))
        for solver_name, solver, stages in solvers:
            for steps in exact_steps if exact_div else args.steps:
                rows.append(
                    (div_name, div, jvps, m, solver_name, solver, steps, stages)
                )
        rows.append((div_name, div, jvps, m, "Dopri5 + PID", dfx.Dopri5(), None, 0))
    mismatch = None
    for div_name, div, jvps, m, solver_name, solver, steps, stages in rows:
        controller = dfx.PIDController(rtol=1e-5, atol=1e-5) if steps is None else None
        run = pf_ode(g, sde, g.score, div, solver, steps, controller)
        (est, prior_gap), seconds = timed(run, x0[:m], keys[3])
        err = est - exact0[:m]
        if mismatch is None:
            mismatch = prior_gap
        nfe = (
            stages * steps
            if steps is not None
            else count_nfe(g, sde, div, solver, controller, x0[:m], keys[3])
        )
        label = f"PF-ODE, {div_name}, {solver_name}"
        label += "" if m == n else f" ({m} samples)"
        print(
            f"| {label} | {steps or 'adaptive'} | {fmt_err(err)} | "
            f"{seconds * 1e3:.0f} | {nfe:.0f} | {nfe * (1 + jvps):.0f} |"
        )
    assert mismatch is not None
    print(
        f"\nThe prior N(0, σ_1² I) against the exact log q_1 at the latents: "
        f"{float(jnp.mean(mismatch)):+.2e} ± {float(jnp.std(mismatch)):.2e} nats "
        "(replaced by the exact value above)."
    )

    # The same samples: Itô's tracked value against the PF-ODE's.
    assert ito_samples is not None and ito_err is not None
    m = min(ito_samples.shape[0], n_exact)
    run = pf_ode(
        g, sde, g.score, sd.ExactDivergence(), dfx.Dopri5(), None,
        dfx.PIDController(rtol=1e-5, atol=1e-5),
    )  # fmt: skip
    (est, _), _ = timed(run, ito_samples[:m], keys[4])
    exact_here = exact_log_q(g, sde.t_min, ito_samples[:m])
    print(
        f"\nOn the first {m} samples of the Itô run ({max(args.steps)} steps): "
        f"Itô {fmt_err(ito_err[:m])}, PF-ODE (exact divergence, Dopri5) "
        f"{fmt_err(est - exact_here)} nats against the exact log q; "
        f"Itô − PF-ODE {fmt_err(ito_err[:m] - (est - exact_here))}."
    )


if __name__ == "__main__":
    main()
