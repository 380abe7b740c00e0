"""What density estimation costs: Itô tracking against plain sampling and the PF-ODE.

    uv run benchmarks/density.py [--repeats 5 --dims 2 784]

At d = 2 and d = 784, with an `MLP` score network (untrained: only time matters;
width 128 at d = 2, width 512 at d = 784), it times, interleaved over rounds with
the median of each (as benchmarks/sampling.py does):

- plain reverse-SDE sampling (`sample`, Euler–Maruyama, no density);
- the same with Itô density tracking, and with the kernel-ratio estimator;
- PF-ODE sampling without density (`sample_ode`, Euler);
- PF-ODE sampling with the log-density (`sample_ode_with_density`, Euler), with
  Hutchinson's estimator (1 probe) and with the exact divergence.

All with the same fixed step count, except the exact divergence at d = 784 (784
JVPs per step), which runs a smaller batch for fewer steps; every cost is reported
per sample and step, and as a ratio to plain sampling. Target: Itô tracking within
1.10x of plain sampling at both sizes.
"""

import argparse

import diffrax as dfx
import jax

import superdiff as sd
from sampling import timed_interleaved


def variants(dim, width, num, steps, exact_num, exact_steps, key):
    sde = sd.VPSDE()
    k_model, k_x, k_run = jax.random.split(key, 3)
    model = sd.EpsilonScore(sd.nn.MLP(dim, width=width, depth=3, key=k_model), sde)
    x1 = jax.random.normal(k_x, (num, dim))
    x_small = x1[:exact_num]

    def sde_run(**kw):
        return lambda: (
            sd.sample(model, sde, key=k_run, x_init=x1, num_steps=steps, **kw).x
        )

    def ode_density(divergence, x, n_steps):
        return lambda: sd.sample_ode_with_density(
            model, sde, x, divergence=divergence, key=k_run, solver=dfx.Euler(),
            num_steps=n_steps,
        ).log_q  # fmt: skip

    fns = {
        "plain SDE sampling (Euler–Maruyama)": sde_run(),
        "+ Itô density tracking": sde_run(
            track_density=True, estimator=sd.ItoEstimator()
        ),
        "+ kernel-ratio tracking": sde_run(
            track_density=True, estimator=sd.KernelRatioEstimator()
        ),
        "PF-ODE sampling, no density (Euler)": lambda: (
            sd.sample_ode(model, sde, x_init=x1, solver=dfx.Euler(), num_steps=steps).x
        ),
        "PF-ODE + Hutchinson, 1 probe (Euler)": ode_density(
            sd.Hutchinson(1), x1, steps
        ),
        "PF-ODE + exact divergence (Euler)": ode_density(
            sd.ExactDivergence(), x_small, exact_steps
        ),
    }
    work = {name: num * steps for name in fns}
    work["PF-ODE + exact divergence (Euler)"] = exact_num * exact_steps
    return fns, work


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--dims", type=int, nargs="+", default=[2, 784])
    args = p.parse_args()
    print(f"backend {jax.default_backend()}, median of {args.repeats} rounds")
    configs = [
        # dim, width, samples, steps, exact-divergence samples and steps
        (2, 128, 2000, 200, 2000, 200),
        (784, 512, 256, 100, 8, 10),
    ]
    for dim, width, num, steps, exact_num, exact_steps in configs:
        if dim not in args.dims:
            continue
        fns, work = variants(
            dim, width, num, steps, exact_num, exact_steps, jax.random.key(dim)
        )
        t = timed_interleaved(fns, args.repeats)
        plain = (
            t["plain SDE sampling (Euler–Maruyama)"]
            / work["plain SDE sampling (Euler–Maruyama)"]
        )
        print(
            f"\n### d = {dim}: MLP width {width}, depth 3; {num} samples, {steps} "
            f"steps (exact divergence: {exact_num} samples, {exact_steps} steps)\n"
        )
        print("| variant | median per batch | µs per sample-step | / plain |")
        print("|---|---|---|---|")
        for name, seconds in t.items():
            per = seconds / work[name]
            print(
                f"| {name} | {seconds * 1e3:.0f} ms | {per * 1e6:.2f} | "
                f"{per / plain:.3f} |"
            )
        ito = t["+ Itô density tracking"] / t["plain SDE sampling (Euler–Maruyama)"]
        verdict = "met" if ito <= 1.10 else "MISSED"
        print(f"\nItô tracking / plain sampling: {ito:.3f} (target <= 1.10: {verdict})")


if __name__ == "__main__":
    main()
