"""Density guidance, high-density sampling, prior guidance and score alignment
(Karczewski et al. 2025a, b; docs/math.md §6) against exact Gaussian answers.

The oracle: for an isotropic Gaussian N(m, v I) the Laplacian of log q_t is the
constant -d / v_t (v_t = α_t² v + σ_t²), so the PF-ODE's own log-density rate
-∇·u = d f + ½ g² d / v_t does not depend on where the sample is, and the exact
change of log q along *any* guided path is a number: (d/2) log(v_{t_max} / v_{t_min})
from the PF-ODE part, plus what the guidance adds.
"""

import math
from statistics import NormalDist

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import superdiff as sd


SDE = sd.VPSDE()
SPAN_LAMBDA = float(SDE.log_snr(SDE.t_min) - SDE.log_snr(SDE.t_max))  # ≈ 19.1


def _gaussian(dim, var=0.3):
    return sd.GaussianMixture(np.linspace(-1, 1, dim)[None], np.array([var]), SDE)


def _variance(t, var=0.3):
    return float(SDE.alpha(t)) ** 2 * var + float(SDE.sigma(t)) ** 2


def _pf_change(dim, var=0.3):
    """Exact change of log q from t_max to t_min along the PF-ODE of N(m, var I)."""
    return 0.5 * dim * math.log(_variance(SDE.t_max, var) / _variance(SDE.t_min, var))


def _quantile_change(dim, q):
    """What `DensityQuantile(q)` adds over the run: ½ sqrt(2d) Φ⁻¹(q) Δλ."""
    return 0.5 * math.sqrt(2 * dim) * NormalDist().inv_cdf(q) * SPAN_LAMBDA


@eqx.filter_jit
def _log_prob(model, t, x):
    return jax.vmap(lambda v: model.log_prob(t, v))(x)


def _median_noise(num, dim, seed=0):
    # Karczewski et al. start density guidance from the median norm: every sample
    # then has the same room to climb (a small-norm latent has little).
    noise = jax.random.normal(jax.random.key(seed), (num, dim))
    return sd.prior_guidance(SDE, noise, 0.5)


# ------------------------------------------------------------------ clocks


def test_time_grid():
    taus = sd.time_grid(SDE, 10)
    np.testing.assert_allclose(taus, np.linspace(0, SDE.t_max - SDE.t_min, 11))
    taus = sd.time_grid(SDE, 10, spacing="log_snr")
    assert taus[0] == 0.0 and taus[-1] == pytest.approx(SDE.t_max - SDE.t_min)
    lams = jax.vmap(SDE.log_snr)(SDE.t_max - taus)
    np.testing.assert_allclose(np.diff(lams), SPAN_LAMBDA / 10, rtol=1e-8)
    with pytest.raises(ValueError, match="spacing"):
        sd.time_grid(SDE, 10, spacing="sigma")


# -------------------------------------------------------- density guidance


@pytest.mark.parametrize("q", [0.4, 0.55])
def test_density_quantile_adds_its_constant_per_log_snr(q):
    # d = 32: raising by q = 0.55 asks for +9.6 nats over the run, within the
    # d/2 = 16 nats a median-norm latent can climb. The adaptive solve (rtol = atol
    # = 1e-5) measured max errors of 6e-4 nats; we allow 0.01.
    dim = 32
    model = _gaussian(dim)
    x1 = _median_noise(64, dim)
    out = sd.sample_density_guided(model.score, SDE, sd.DensityQuantile(q), x_init=x1)
    change = _log_prob(model, SDE.t_min, out.x) - _log_prob(model, SDE.t_max, x1)
    expected = _pf_change(dim) + _quantile_change(dim, q)
    np.testing.assert_allclose(change, expected, atol=0.01)
    # Fixed steps uniform in log-SNR: 200 Heun steps measured 0.007 nats off;
    # uniform in t (every sampler's default) they are 1.25 nats off.
    fixed = sd.sample_density_guided(
        model.score, SDE, sd.DensityQuantile(q), x_init=x1, solver=dfx.Heun(),
        num_steps=200, spacing="log_snr",
    )  # fmt: skip
    change = _log_prob(model, SDE.t_min, fixed.x) - _log_prob(model, SDE.t_max, x1)
    np.testing.assert_allclose(change, expected, atol=0.03)


MIXTURE = sd.GaussianMixture(
    np.stack([np.full(8, 1.0), np.full(8, -1.0)]), np.array([0.2, 0.3]), SDE
)


def test_density_quantile_moves_log_p0_and_tracks_it():
    # On a two-component mixture (d = 8) against the exact log q_{t_min}: q = 0.5 is
    # the PF-ODE itself; q < 0.5 lowers the mean log p_0 and q > 0.5 raises it (by
    # about the requested 19 Φ⁻¹(q) ½ sqrt(2d) nats: -20 for 0.3, +1.9 for 0.52).
    x1 = _median_noise(50, 8)
    # Φ⁻¹(0.5) = 0: η = 1, the PF-ODE itself.
    t = jnp.asarray(0.5)
    s = MIXTURE.score(t, x1[0])
    assert float(sd.DensityQuantile(0.5).scale(t, x1[0], s, None, SDE)) == 1.0
    means = {}
    for q in (0.3, 0.5, 0.52):
        out = sd.sample_density_guided(
            MIXTURE.score, SDE, sd.DensityQuantile(q), x_init=x1, track_density=True
        )
        exact = _log_prob(MIXTURE, SDE.t_min, out.x)
        means[q] = float(jnp.mean(exact))
        # Tracked with the exact Laplacian: the solver's tolerance (measured < 0.02).
        assert out.log_q is not None
        np.testing.assert_allclose(out.log_q[:, 0], exact, atol=0.05)
    assert means[0.3] < means[0.5] - 15
    assert means[0.52] > means[0.5] + 1.0


def test_density_rate_sets_the_log_density_change():
    # d log q = b dλ with b = 0.2: every sample's exact log q changes by 0.2 Δλ
    # from its start (the PF-ODE would give +4.8 on average; this asks +3.8).
    x1 = _median_noise(50, 8, seed=1)
    guidance = sd.DensityRate(lambda t, x: 0.2)
    out = sd.sample_density_guided(MIXTURE.score, SDE, guidance, x_init=x1)
    change = _log_prob(MIXTURE, SDE.t_min, out.x) - _log_prob(MIXTURE, SDE.t_max, x1)
    np.testing.assert_allclose(change, 0.2 * SPAN_LAMBDA, atol=0.02)


# --------------------------------------------------------- stochastic guidance


def _stochastic_errors(num_steps, dim=8, q=0.4, noise=0.5, num=64, seed=3):
    model = _gaussian(dim)
    x1 = _median_noise(num, dim, seed=2)
    lq1 = _log_prob(model, SDE.t_max, x1)
    out = sd.sample_density_guided(
        model.score, SDE, sd.DensityQuantile(q), x_init=x1, noise=noise,
        num_steps=num_steps, spacing="log_snr", key=jax.random.key(seed),
        track_density=True, log_q_init=lq1,
    )  # fmt: skip
    assert out.log_q is not None
    expected = _pf_change(dim) + _quantile_change(dim, q)
    exact = _log_prob(model, SDE.t_min, out.x) - lq1
    return exact - expected, out.log_q[:, 0] - lq1 - expected, out.x


def _check_stochastic_run(num_steps):
    exact_err, tracked_err, x = _stochastic_errors(num_steps)
    # By construction the tracked change is the requested one, up to the Euler
    # quadrature of the rate in λ: measured 8.3 / N nats, the same for all samples.
    np.testing.assert_allclose(tracked_err, 0.0, atol=12 / num_steps)
    # The exact change: unbiased up to the step (measured mean +0.01 at 100 steps,
    # -0.06 at 400), with 4 standard errors for the 64 samples.
    sem = float(jnp.std(exact_err)) / math.sqrt(exact_err.size)
    assert abs(float(jnp.mean(exact_err))) < 0.15 + 4 * sem
    # The noise is real: another key ends elsewhere (measured 0.85 per coordinate
    # from the deterministic flow's samples).
    other = _stochastic_errors(num_steps, seed=4)[2]
    assert float(jnp.mean(jnp.abs(x - other))) > 0.3
    return float(jnp.std(exact_err))


def test_stochastic_guidance_keeps_the_requested_change():
    # Noise 0.5 g projected orthogonal to the score, Hutchinson Laplacian with fresh
    # probes per step, on N(m, 0.3 I) in d = 8. In continuous time log q gets no
    # noise; Euler–Maruyama leaves a spread, measured ± 0.63 nats at 100 steps.
    assert _check_stochastic_run(100) < 1.0


@pytest.mark.slow
def test_stochastic_guidance_converges():
    # The spread halves as the steps quadruple (strong order ½): measured 0.63 at
    # 100 steps and 0.35 at 400. The ratio of two 64-sample standard deviations
    # is known to about ±0.06, so we require < 0.7.
    coarse, fine = _check_stochastic_run(100), _check_stochastic_run(400)
    assert fine < 0.7 * coarse, (coarse, fine)


# ------------------------------------------------------- high-density sampling


def test_high_density_raises_log_p0_as_the_switch_moves_earlier():
    # One adaptive solve per switch (the switch is a jump time of the controller),
    # tracking log q with the exact Laplacian: along the HD-ODE the rate is
    # d f - ½ g² ∇·s + ½ g² ‖s‖².
    x1 = jax.random.normal(jax.random.key(4), (50, 8))
    means = []
    for t_switch in (SDE.t_min, 0.2, 0.5, 0.9):
        out = sd.sample_high_density(
            MIXTURE.score, SDE, x_init=x1, t_switch=t_switch, track_density=True
        )
        exact = _log_prob(MIXTURE, SDE.t_min, out.x)
        assert out.log_q is not None
        np.testing.assert_allclose(out.log_q[:, 0], exact, atol=0.05)
        means.append(float(jnp.mean(exact)))
    # Measured: -6.1 (the PF-ODE), -3.7, -2.6, -2.3; the HD-ODE climbs towards the
    # modes, where log p_0 is about -2.1.
    assert all(b > a + 0.2 for a, b in zip(means, means[1:], strict=False)), means
    # The switch given as a log-SNR is the same switch.
    by_lambda = sd.sample_high_density(
        MIXTURE.score, SDE, x_init=x1, log_snr_switch=float(SDE.log_snr(0.5)),
        track_density=True,
    )  # fmt: skip
    np.testing.assert_allclose(
        jnp.mean(_log_prob(MIXTURE, SDE.t_min, by_lambda.x)), means[2], atol=1e-6
    )
    # Fixed steps uniform in log-SNR, the switch added to the grid: within 0.1 nats
    # of the adaptive solve's mean log p_0 (-2.6 at t_switch = 0.5).
    fixed = sd.sample_high_density(
        MIXTURE.score, SDE, x_init=x1, t_switch=0.5, num_steps=100,
        solver=dfx.Heun(), track_density=True,
    )  # fmt: skip
    np.testing.assert_allclose(
        jnp.mean(_log_prob(MIXTURE, SDE.t_min, fixed.x)), means[2], atol=0.1
    )


# ----------------------------------------------------------- prior guidance


def test_prior_guidance_gives_the_quantile_norm():
    dim = 16
    noise = jax.random.normal(jax.random.key(6), (2000, dim))
    for q in (0.1, 0.5, 0.9):
        scaled = sd.prior_guidance(SDE, noise, q)
        norms = jnp.linalg.norm(scaled, axis=1)
        target = float(SDE.sigma(SDE.t_max)) * scipy.stats.chi.ppf(q, dim)
        np.testing.assert_allclose(norms, target, rtol=1e-10)
        # Directions are kept.
        np.testing.assert_allclose(
            scaled / norms[:, None],
            noise / jnp.linalg.norm(noise, axis=1, keepdims=True),
            rtol=1e-10,
        )
        # And the target is the q-quantile of the prior's norm: a share q of fresh
        # prior draws fall inside it (binomial standard error sqrt(q(1-q)/n)).
        share = float(jnp.mean(jnp.linalg.norm(noise, axis=1) < target))
        assert abs(share - q) < 4 * math.sqrt(q * (1 - q) / 2000)


def test_prior_guidance_moves_log_p0():
    # A Gaussian is score-aligned everywhere (test below), so a smaller latent norm
    # gives a higher log p_0: exactly -(‖x_T - m_T‖² / v_T) / 2 + const.
    dim = 8
    model = _gaussian(dim)
    noise = jax.random.normal(jax.random.key(7), (50, dim))
    means = [
        float(
            jnp.mean(
                _log_prob(
                    model,
                    SDE.t_min,
                    sd.sample_prior_guided(model.score, SDE, q, x_init=noise).x,
                )
            )
        )
        for q in (0.1, 0.5, 0.9)
    ]
    assert means[0] > means[1] + 1 and means[1] > means[2] + 1, means


# ---------------------------------------------------------- score alignment


# Both score-alignment tests use 1-D two-component mixtures and five latents, so
# they share their compiled solves.
ALIGN_LATENTS = jnp.array([[0.05], [0.3], [-0.3], [2.0], [-3.0]])


def test_score_alignment_closed_form_on_a_gaussian():
    # The PF-ODE of N(m, v) is x_t = m_t + k_t (x_T - m_T) with k = sqrt(v_t/v_T), so
    # <s_0(x_0), k s_T(x_T)> = (x_T - m_T)² / v_T²: positive, known exactly. (A
    # mixture of two equal components is that Gaussian.) The divergence-only
    # variant integrates d ω = -∇·(J_u v) = 0 here (u is affine), so it returns
    # ω_0 = s_T², the same number.
    model = sd.GaussianMixture(np.array([[0.7], [0.7]]), np.array([0.3, 0.3]), SDE)
    m_t = float(SDE.alpha(SDE.t_max)) * 0.7
    expected = (np.asarray(ALIGN_LATENTS[:, 0]) - m_t) ** 2 / _variance(SDE.t_max) ** 2
    jvp = sd.score_alignment(model.score, SDE, ALIGN_LATENTS).extras["alignment"]
    div = sd.score_alignment(
        model.score, SDE, ALIGN_LATENTS, method="divergence"
    ).extras["alignment"]
    np.testing.assert_allclose(jvp, expected, rtol=1e-3)  # solver: measured 6e-5
    np.testing.assert_allclose(div, expected, rtol=1e-8)


def test_score_alignment_sign_on_a_bimodal_mixture():
    # Modes at ±2: the PF-ODE map Φ is increasing and Φ(0) = 0. Latents near 0 land
    # between 0 and a mode, where the data score points outwards, against the prior
    # score's pull -x_T: alignment < 0 (shrinking the latent lowers log p_0).
    # Latents far out land beyond the mode: > 0. Against an independent route: the
    # central difference of log q_{t_min}(Φ(x_T + h s_T)) in h, by tight PF-ODE
    # solves (rtol 1e-9, so its error is ~1e-9 / h = 1e-5 relative).
    model = sd.GaussianMixture(np.array([[-2.0], [2.0]]), np.array([0.1, 0.1]), SDE)
    jvp = np.asarray(
        sd.score_alignment(model.score, SDE, ALIGN_LATENTS).extras["alignment"]
    )
    div = sd.score_alignment(
        model.score, SDE, ALIGN_LATENTS, method="divergence"
    ).extras["alignment"]
    np.testing.assert_array_equal(np.sign(jvp), [-1, -1, -1, 1, 1])
    np.testing.assert_allclose(div, jvp, rtol=1e-3)
    h = 1e-4
    s_t = jax.vmap(lambda v: model.score(SDE.t_max, v))(ALIGN_LATENTS)
    ends = sd.sample_ode(
        model.score, SDE, x_init=jnp.concatenate([ALIGN_LATENTS + h * s_t,
                                                  ALIGN_LATENTS - h * s_t]),
        stepsize_controller=dfx.PIDController(rtol=1e-9, atol=1e-9),
    ).x  # fmt: skip
    log_p = np.asarray(_log_prob(model, SDE.t_min, ends))
    np.testing.assert_allclose(jvp, (log_p[:5] - log_p[5:]) / (2 * h), rtol=1e-3)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("q", [0.0, 1.0, 1.5, -0.2])
def test_quantiles_outside_zero_one_raise(q):
    with pytest.raises(ValueError, match="quantile"):
        sd.DensityQuantile(q)
    with pytest.raises(ValueError, match="quantile"):
        sd.prior_guidance(SDE, jnp.ones((2, 3)), q)


def test_bad_arguments_raise():
    model = _gaussian(2)
    x1 = jnp.ones((4, 2))
    run = lambda **kw: sd.sample_density_guided(
        model.score, SDE, sd.DensityQuantile(0.4), x_init=x1, **kw
    )
    with pytest.raises(TypeError, match="guidance"):
        sd.sample_density_guided(model.score, SDE, 0.4, x_init=x1)  # pyright: ignore
    with pytest.raises(ValueError, match="noise"):
        run(noise=-1.0)
    with pytest.raises(ValueError, match="Euler"):
        run(noise=0.5, num_steps=10, key=jax.random.key(0), solver=dfx.Heun())
    with pytest.raises(ValueError, match="num_steps"):
        run(noise=0.5, key=jax.random.key(0))
    with pytest.raises(ValueError, match="key"):
        run(noise=0.5, num_steps=10)
    with pytest.raises(ValueError, match="spacing"):
        run(num_steps=10, spacing="sigma")
    with pytest.raises(ValueError, match="spacing"):
        run(spacing="t")  # adaptive: nothing to place
    with pytest.raises(ValueError, match="laplacian"):
        run(laplacian=sd.Hutchinson(1))  # neither tracked nor needed
    with pytest.raises(TypeError, match="rate"):
        sd.DensityRate(0.2)  # pyright: ignore
    with pytest.raises(ValueError, match="min_norm"):
        sd.DensityQuantile(0.4, min_norm=0.0)
    with pytest.raises(ValueError, match="exactly one"):
        sd.sample_high_density(model.score, SDE, x_init=x1)
    with pytest.raises(ValueError, match="exactly one"):
        sd.sample_high_density(
            model.score, SDE, x_init=x1, t_switch=0.5, log_snr_switch=0.0
        )
    with pytest.raises(ValueError, match="switch"):
        sd.sample_high_density(model.score, SDE, x_init=x1, t_switch=1.5)
    with pytest.raises(ValueError, match="method"):
        sd.score_alignment(model.score, SDE, x1, method="hessian")
    with pytest.raises(ValueError, match="divergence"):
        sd.score_alignment(model.score, SDE, x1, divergence=sd.ExactDivergence())
    with pytest.raises(ValueError, match="batch"):
        sd.prior_guidance(SDE, jnp.ones(3), 0.5)


def test_unreachable_density_is_reported():
    # q = 0.9 in d = 2 asks for +24 nats over the run, far more than the density
    # can give: the adaptive solve stiffens near the mode, and the error says why.
    model = _gaussian(2)
    with pytest.raises(RuntimeError, match="out of reach"):
        sd.sample_density_guided(
            model.score, SDE, sd.DensityQuantile(0.9), x_init=_median_noise(8, 2),
            max_steps=200,
        )  # fmt: skip
