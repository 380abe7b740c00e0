"""Bad input is caught before compute and named; densities start from the right
prior when `t_max` is below the schedule's (issue: densities and input checks)."""

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import superdiff as sd


VP = sd.VPSDE()
LEFT = sd.GaussianMixture(np.array([[-1.5, 0.0]]), np.array([0.25]), VP)
RIGHT = sd.GaussianMixture(np.array([[1.5, 0.0]]), np.array([0.25]), VP)
KEY = jax.random.key(0)


def _nan_score(t, x):
    return jnp.full_like(x, jnp.nan)


# ------------------------------------------------- starting below the schedule


def test_tracked_density_starts_from_the_noise_it_draws():
    # VE with a point mass at 0 (variance 1e-8, negligible against sigma_min^2 =
    # 1e-4): q_t = N(0, sigma_t^2 I) exactly. From t_max = 0.5 the noise is drawn
    # from N(0, sigma_0.5^2 I) and must be scored by that law, not the prior at
    # t = 1 (which was off by -7.5 nats here). Itô's error at 1000 steps, d = 2, is
    # ~0.05 in the mean with std ~0.4, so 0.2 is 4 standard errors of 400 samples
    # plus the bias.
    ve = sd.VESDE()
    point = sd.GaussianMixture(np.zeros((1, 2)), np.array([1e-8]), ve)
    out = sd.sample(
        point.score, ve, key=KEY, num_samples=400, shape=(2,), num_steps=1000,
        track_density=True, t_max=0.5,
    )  # fmt: skip
    assert out.log_q is not None
    exact = jax.vmap(lambda v: point.log_prob(ve.t_min, v))(out.x)
    assert abs(float(jnp.mean(out.log_q[:, 0] - exact))) < 0.2
    # The PF-ODE likelihood from t_max = 0.5, given the model's q_0.5 (here
    # N(0, sigma_0.5^2 I) exactly; the adaptive solve's tolerance, 1e-5, allows
    # ~1e-3 nats over the path).
    lp = sd.log_prob_ode(
        point.score, ve, out.x, t_max=0.5,
        log_q_t_max=lambda z: point.log_prob(0.5, z),
    ).log_q  # fmt: skip
    assert lp is not None
    np.testing.assert_allclose(lp[:, 0], exact, atol=5e-3)


# ------------------------------------------------- non-finite values, named


def test_nan_inputs_are_named_before_the_solve():
    x = jax.random.normal(KEY, (20, 2)).at[15, 1].set(jnp.nan)  # past row 8
    with pytest.raises(eqx.EquinoxRuntimeError, match="`x_init` contains NaN"):
        sd.sample([LEFT.score, RIGHT.score], VP, sd.Or(), key=KEY, x_init=x)
    with pytest.raises(eqx.EquinoxRuntimeError, match="`x` contains NaN"):
        sd.log_prob_ode(LEFT.score, VP, x, num_steps=10)
    good = jnp.nan_to_num(x)
    for bad in (jnp.nan, -jnp.inf):
        log_q = jnp.zeros((20, 2)).at[3, 0].set(bad)
        with pytest.raises(eqx.EquinoxRuntimeError, match="`log_q_init` contains"):
            sd.sample(
                [LEFT.score, RIGHT.score], VP, sd.Or(), key=KEY, x_init=good,
                log_q_init=log_q, num_steps=5,
            )  # fmt: skip


@pytest.mark.parametrize("num_steps", [10, None], ids=["fixed", "adaptive"])
def test_a_nan_score_is_named_by_the_probability_flow_samplers(num_steps):
    # Fixed steps used to return NaN silently; adaptive ones ran out of steps with
    # advice to raise `max_steps`.
    x = jax.random.normal(KEY, (4, 2))
    with pytest.raises(eqx.EquinoxRuntimeError, match=r"Score model\(s\) \[0\]"):
        sd.log_prob_ode(_nan_score, VP, x, num_steps=num_steps)
    with pytest.raises(eqx.EquinoxRuntimeError, match=r"Score model\(s\) \[0\]"):
        sd.sample_ode_with_density(_nan_score, VP, x, num_steps=num_steps)
    images = np.zeros((2, 3), np.uint8)
    with pytest.raises(eqx.EquinoxRuntimeError, match=r"Score model\(s\) \[0\]"):
        sd.bits_per_dim(_nan_score, VP, images, key=KEY, num_steps=num_steps)


def _nan_below_half(t, x):
    # Finite where the solve starts (the early check passes), NaN from t = 0.5 on.
    return jnp.where(t > 0.5, -x, jnp.nan)


def test_a_score_that_turns_nan_midway_is_named_by_an_adaptive_solve():
    # The controller rejects every step into the NaN region and creeps towards it:
    # that used to end with "maximum number of solver steps was reached".
    x = jax.random.normal(KEY, (4, 2))
    out = sd.sample_ode(_nan_below_half, VP, x_init=x, max_steps=2000, throw=False)
    assert out.result == sd.RESULTS.non_finite
    with pytest.raises(eqx.EquinoxRuntimeError, match="NaN or inf"):
        sd.sample_ode(_nan_below_half, VP, x_init=x, max_steps=2000)
    # A solve that only needs more steps still says so.
    tight = dfx.PIDController(rtol=1e-10, atol=1e-10)
    short = sd.sample_ode(
        LEFT.score, VP, x_init=x, stepsize_controller=tight, max_steps=20, throw=False
    )
    assert short.result == sd.RESULTS.max_steps_reached


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: sd.Or(temperature=float("inf")), "finite, positive temperature"),
        (lambda: sd.Or(temperature=float("nan")), "finite, positive temperature"),
        (lambda: sd.Or(bias=(float("nan"), 0.0)), "bias"),
        (lambda: sd.Or(bias=(-float("inf"), -float("inf"))), "not every"),
    ],
)
def test_or_arguments_are_checked(make, match):
    with pytest.raises(ValueError, match=match):
        make()
    # One model turned off is allowed.
    sd.Or(bias=(0.0, -float("inf")))


# ------------------------------------------------------------ raw errors


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"key": 0}, TypeError, "JAX random key"),
        ({"key": None}, ValueError, "give `key="),
        ({"shape": 2}, ValueError, "`shape` must be the shape of one example"),
        ({"num_samples": 0}, ValueError, "`num_samples` must be a positive integer"),
        ({"num_steps": True}, ValueError, "`num_steps` must be a positive integer"),
        ({"num_steps": 2.5}, ValueError, "`num_steps` must be a positive integer"),
    ],
)
def test_sample_arguments_name_what_was_expected(kwargs, error, match):
    kwargs = {"key": KEY, "num_samples": 4, "shape": (2,), "num_steps": 5} | kwargs
    with pytest.raises(error, match=match):
        sd.sample(LEFT.score, VP, **kwargs)


def test_integer_step_counts_of_any_kind_are_accepted():
    for steps in (np.int64(3), jnp.array(3), np.array(3, np.int32)):
        num_steps: int = steps  # pyright: ignore[reportAssignmentType]
        out = sd.sample(
            LEFT.score, VP, key=KEY, num_samples=2, shape=(2,), num_steps=num_steps
        )
        assert out.x.shape == (2, 2)


def test_models_must_be_scores():
    with pytest.raises(TypeError, match="`models` must be a score"):
        sd.sample(None, VP, key=KEY, num_samples=2, shape=(2,))  # pyright: ignore


def test_probability_flow_inputs_are_checked():
    with pytest.raises(ValueError, match="non-empty batch"):
        sd.log_prob_ode(LEFT.score, VP, jnp.zeros((0, 2)))
    with pytest.raises(ValueError, match="must be an ODE solver"):
        sd.log_prob_ode(LEFT.score, VP, jnp.zeros((3, 2)), solver=dfx.SRA1())
    with pytest.raises(ValueError, match="`x` must be a non-empty batch"):
        sd.log_prob_ode(LEFT.score, VP, jnp.zeros(2))
    with pytest.raises(ValueError, match="Hutchinson` draws random probes"):
        sd.log_prob_ode(
            LEFT.score, VP, jnp.zeros((3, 2)), divergence=sd.Hutchinson(), num_steps=2
        )


# ----------------------------------------------------------------- oracles


@pytest.mark.parametrize(
    "covariances, weights, match",
    [
        (np.array([0.2, -0.1]), None, "Covariance 1 must be positive definite"),
        (np.array([[[1.0, 2.0], [2.0, 1.0]], np.eye(2)]), None, "Covariance 0"),
        (np.array([[[1.0, 0.5], [0.0, 1.0]], np.eye(2)]), None, "symmetric"),
        (np.array([0.2, 0.3]), np.array([0.5, -0.1]), "weights"),
        (np.array([0.2, 0.3]), np.array([0.0, 0.0]), "weights"),
    ],
)
def test_gaussian_mixture_refuses_what_has_no_density(covariances, weights, match):
    means = np.array([[0.0, 0.0], [1.0, 1.0]])
    with pytest.raises(ValueError, match=match):
        sd.GaussianMixture(means, covariances, VP, weights)


def test_and_weights_of_a_step_of_no_length_are_uniform():
    scores = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    kappa = sd.and_weights(scores, jnp.zeros(2), 0.0)
    np.testing.assert_allclose(kappa, np.full(3, 1 / 3), rtol=1e-12)


@pytest.mark.parametrize(
    "solver",
    [dfx.Heun(), dfx.Midpoint(), dfx.ReversibleHeun()],
    ids=lambda s: type(s).__name__,
)
def test_superposition_term_refuses_solvers_other_than_euler(solver):
    # Through diffeqsolve directly (sample checks before it starts): these solvers
    # gave -11.3, -11.4 and -0.05 ± 16 nats of error in the tracked log q.
    x1 = jax.random.normal(KEY, (8, 2))
    term = sd.SuperpositionTerm(
        VP, sd.score_family(LEFT.score), sd.Single(),
        dfx.UnsafeBrownianPath(shape=x1.shape, key=KEY),
    )  # fmt: skip
    y0 = term.init(x1, jnp.zeros((8, 1)))

    def solve(solver):
        return dfx.diffeqsolve(
            term, solver, t0=0.0, t1=0.5, dt0=0.05, y0=y0, adjoint=dfx.ForwardMode()
        )

    with pytest.raises(eqx.EquinoxRuntimeError, match=r"only under `diffrax.Euler"):
        solve(solver)
    sol = solve(dfx.Euler())
    assert sol.ys is not None and bool(jnp.all(jnp.isfinite(sol.ys.log_q)))


def test_superposition_term_asks_for_its_initial_state():
    # The kernel ratio's curvature correction keeps a carry between steps: a state
    # built without it is refused with the way to build one.
    x1 = jax.random.normal(KEY, (8, 2))
    term = sd.SuperpositionTerm(
        VP, sd.score_family(LEFT.score), sd.Single(),
        dfx.UnsafeBrownianPath(shape=x1.shape, key=KEY),
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"SuperpositionTerm.init"):
        dfx.diffeqsolve(
            term, dfx.Euler(), t0=0.0, t1=0.5, dt0=0.05,
            y0=sd.SuperpositionState(x1, jnp.zeros((8, 1))),
            adjoint=dfx.ForwardMode(),
        )  # fmt: skip
