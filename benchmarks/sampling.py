"""Sampling costs on the two-moons network, measured side by side in one run.

    uv run benchmarks/sampling.py [--num-samples 2000 --num-steps 500 --repeats 5]

Prints wall-clock medians (after a compile-and-warm-up call) and the ratios:

- density tracking vs plain sampling (target <= 1.10);
- `superdiff.sample` vs a hand-written `lax.scan` Euler–Maruyama loop, same network
  (target <= 1.25);
- SuperDiff OR over M = 2 models vs two single-model runs (target <= 1.0);
- PF-ODE with exact and with Hutchinson divergence vs the Itô estimator (reported).
"""

import argparse
import statistics
import time

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp

import superdiff as sd


def timed_interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median wall-clock seconds of each callable. After one compile-and-warm-up
    call each, the callables take turns in every round, so that drifts in the
    machine's load hit all of them alike (this machine is shared)."""
    for fn in fns.values():
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            tic = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - tic)
    return {name: statistics.median(ts) for name, ts in times.items()}


@eqx.filter_jit
def scan_euler_maruyama(score, sde, x, key, num_steps: int):
    """The reference loop: reverse-SDE Euler–Maruyama written by hand."""
    dtau = (sde.t_max - sde.t_min) / num_steps

    def step(x, inputs):
        i, k = inputs
        t = sde.t_max - i * dtau
        f, g2 = sde.drift_coef(t), sde.diffusion_squared(t)
        s = jax.vmap(lambda xi: score(t, xi))(x)
        noise = jnp.sqrt(g2 * dtau) * jax.random.normal(k, x.shape)
        return x + (-f * x + g2 * s) * dtau + noise, None

    keys = jax.random.split(key, num_steps)
    x, _ = jax.lax.scan(step, x, (jnp.arange(num_steps), keys))
    return x


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--num-samples", type=int, default=2000)
    p.add_argument("--num-steps", type=int, default=500)
    p.add_argument("--ode-steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    sde = sd.VPSDE()
    keys = jax.random.split(jax.random.key(0), 4)
    model_a = sd.EpsilonScore(sd.nn.MLP(2, width=128, depth=3, key=keys[0]), sde)
    model_b = sd.EpsilonScore(sd.nn.MLP(2, width=128, depth=3, key=keys[1]), sde)
    x1 = jax.random.normal(keys[2], (args.num_samples, 2))
    key = keys[3]
    n, r = args.num_steps, args.repeats
    print(
        f"backend {jax.default_backend()}, {args.num_samples} samples, {n} steps, "
        f"median of {r} interleaved rounds"
    )

    m = args.ode_steps
    pair = sd.score_family([model_a, model_b])
    ito, kernel_ratio = sd.ItoEstimator(), sd.KernelRatioEstimator()

    def run(models, operator=None, steps=n, **kw):
        return lambda: (
            sd.sample(
                models, sde, operator, key=key, x_init=x1, num_steps=steps, **kw
            ).x
        )

    t = timed_interleaved(
        {
            "plain": run(model_a),
            "tracked": run(model_a, track_density=True, estimator=ito),
            "kernel": run(model_a, track_density=True, estimator=kernel_ratio),
            "scan": lambda: scan_euler_maruyama(model_a, sde, x1, key, n),
            "or": run(pair, sd.Or()),
            "and": run(pair, sd.And()),
            "ito_m": run(model_a, steps=m, track_density=True),
            "exact": lambda: (
                sd.sample_ode_with_density(
                    model_a, sde, x1, solver=dfx.Euler(), num_steps=m
                ).log_q
            ),
            "hutch": lambda: (
                sd.sample_ode_with_density(
                    model_a,
                    sde,
                    x1,
                    divergence=sd.Hutchinson(1),
                    key=key,
                    solver=dfx.Euler(),
                    num_steps=m,
                ).log_q
            ),  # fmt: skip
        },
        r,
    )
    plain, tracked, kernel, scan = t["plain"], t["tracked"], t["kernel"], t["scan"]
    superposed, and_time = t["or"], t["and"]
    ito_m, exact, hutch = t["ito_m"], t["exact"], t["hutch"]

    rows = [
        ("plain sampling (Euler, no density)", plain, None),
        ("with Itô density tracking", tracked, None),
        ("with kernel-ratio density tracking", kernel, None),
        ("hand-written lax.scan Euler–Maruyama", scan, None),
        ("SuperDiff OR, M = 2", superposed, None),
        ("SuperDiff AND, M = 2", and_time, None),
        (f"Itô tracking, {m} steps", ito_m, None),
        (f"PF-ODE + exact divergence, Euler {m} steps", exact, None),
        (f"PF-ODE + Hutchinson (1 probe), Euler {m} steps", hutch, None),
    ]
    for name, seconds, _ in rows:
        print(f"  {name:<48} {seconds * 1e3:9.1f} ms")
    ratios = [
        ("Itô tracking / plain", tracked / plain, 1.10),
        ("kernel-ratio tracking / plain", kernel / plain, 1.10),
        ("superdiff.sample / lax.scan loop", plain / scan, 1.25),
        ("OR (M=2) / two single-model runs", superposed / (2 * plain), 1.0),
        ("AND (M=2) / two single-model runs", and_time / (2 * plain), 1.0),
        ("PF-ODE exact divergence / Itô (equal steps)", exact / ito_m, None),
        ("PF-ODE Hutchinson / Itô (equal steps)", hutch / ito_m, None),
    ]
    print("ratios:")
    for name, ratio, target in ratios:
        verdict = (
            ""
            if target is None
            else (f"  target <= {target:.2f}: {'met' if ratio <= target else 'MISSED'}")
        )
        print(f"  {name:<46} {ratio:6.3f}{verdict}")


if __name__ == "__main__":
    main()
