"""Shared test configuration: float64 everywhere, so that tolerances reflect the
mathematics (sample counts, step sizes) rather than float32 round-off."""

import jax


jax.config.update("jax_enable_x64", True)
