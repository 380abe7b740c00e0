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


def timed(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile and warm up
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


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
    model_a = sd.EpsilonScore(sd.MLP(2, width=128, depth=3, key=keys[0]), sde)
    model_b = sd.EpsilonScore(sd.MLP(2, width=128, depth=3, key=keys[1]), sde)
    x1 = jax.random.normal(keys[2], (args.num_samples, 2))
    key = keys[3]
    n, r = args.num_steps, args.repeats
    print(
        f"backend {jax.default_backend()}, {args.num_samples} samples, {n} steps, "
        f"median of {r}"
    )

    plain = timed(lambda: sd.sample(model_a, sde, key=key, x_init=x1, num_steps=n).x, r)
    tracked = timed(
        lambda: (
            sd.sample(
                model_a, sde, key=key, x_init=x1, num_steps=n, track_density=True
            ).log_q
        ),
        r,
    )
    kernel = timed(
        lambda: sd.sample(
            model_a, sde, key=key, x_init=x1, num_steps=n, track_density=True,
            estimator=sd.KernelRatioEstimator(),
        ).log_q,
        r,
    )  # fmt: skip
    scan = timed(lambda: scan_euler_maruyama(model_a, sde, x1, key, n), r)
    pair = sd.score_family([model_a, model_b])
    superposed = timed(
        lambda: sd.sample(pair, sde, sd.Or(), key=key, x_init=x1, num_steps=n).x, r
    )
    and_time = timed(
        lambda: sd.sample(pair, sde, sd.And(), key=key, x_init=x1, num_steps=n).x, r
    )

    m = args.ode_steps
    ito_m = timed(
        lambda: (
            sd.sample(
                model_a, sde, key=key, x_init=x1, num_steps=m, track_density=True
            ).log_q
        ),
        r,
    )
    exact = timed(
        lambda: sd.sample_ode_with_density(
            model_a, sde, x1, solver=dfx.Euler(), num_steps=m
        )[1],
        r,
    )
    hutch = timed(
        lambda: sd.sample_ode_with_density(
            model_a,
            sde,
            x1,
            divergence=sd.Hutchinson(1),
            key=key,
            solver=dfx.Euler(),
            num_steps=m,
        )[1],
        r,
    )

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
