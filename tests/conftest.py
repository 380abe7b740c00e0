"""Shared test configuration: float64 everywhere, so that tolerances reflect the
mathematics (sample counts, step sizes) rather than float32 round-off; and XLA's
lowest optimisation level, since these tests spend most of their time compiling
small programs, not running them (measured: the sampling and guidance tests take
0.82 of the time at level 0). The flag is read when JAX starts its backend, which
no test module does at import; subprocesses that tests start inherit it."""

import os

import jax


os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0"
).strip()
jax.config.update("jax_enable_x64", True)
