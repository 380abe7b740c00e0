"""The one setup (docs/architecture.md): every numeric parameter may be traced (a
sweep is one compilation, `jax.vmap` over it equals separate calls), capabilities are
declared, and the answers that used to be silently wrong are right or refused."""

import ast
import math
import pathlib
import re
from typing import Any

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import superdiff as sd


SDE = sd.VPSDE()
LEFT = sd.GaussianMixture(np.array([[-1.5, 0.0]]), np.array([0.25]), SDE)
RIGHT = sd.GaussianMixture(np.array([[1.5, 0.0]]), np.array([0.25]), SDE)
KEY = jax.random.key(0)
SRC = pathlib.Path(sd.__file__).parent


def _sweep(fn, values, rtol=1e-9):
    """`jax.vmap(fn)(values)` equals the separate calls, and a jitted `fn` compiles
    once for all values."""
    values = jnp.asarray(values)
    jitted = jax.jit(fn)
    separate = [jitted(v) for v in values]
    assert jitted._cache_size() == 1  # pyright: ignore[reportAttributeAccessIssue]
    batched = jax.vmap(fn)(values)
    for i, one in enumerate(separate):
        np.testing.assert_allclose(batched[i], one, rtol=rtol, atol=1e-12)
    return separate


def test_or_temperature_sweep_compiles_once_and_vmaps():
    def run(temperature):
        out = sd.sample(
            [LEFT.score, RIGHT.score], SDE, sd.Or(temperature), key=KEY,
            num_samples=64, shape=(2,), num_steps=30,
        )  # fmt: skip
        return out.x

    xs = _sweep(run, [1.0, 100.0, 1e6])
    # The temperature does something: T = 1 and T = 1e6 end in different places.
    assert float(jnp.max(jnp.abs(xs[0] - xs[2]))) > 1e-3


def test_and_tolerance_sweep_compiles_once_and_vmaps():
    def run(max_weight):
        out = sd.sample(
            [LEFT.score, RIGHT.score], SDE, sd.And(max_weight=max_weight), key=KEY,
            num_samples=32, shape=(2,), num_steps=30,
        )  # fmt: skip
        return out.x

    xs = _sweep(run, [1.0, 3.0, 1e6])
    # The bound acts: weights held to [0, 1] end elsewhere than unbounded ones.
    assert float(jnp.max(jnp.abs(xs[0] - xs[2]))) > 1e-3


def test_high_density_switch_sweep_compiles_once_and_vmaps():
    x1 = LEFT.sample(16, SDE.t_max, key=KEY)

    def run(t_switch):
        return sd.sample_high_density(
            LEFT.score, SDE, t_switch=t_switch, x_init=x1, num_steps=40
        ).x

    xs = _sweep(run, [0.2, 0.5, 0.8])
    # An earlier (noisier) switch climbs longer: the samples end nearer the mode.
    spread = [float(jnp.mean(jnp.sum((x - LEFT.means[0]) ** 2, axis=1))) for x in xs]
    assert spread[2] < spread[0]


def test_prior_guided_quantile_sweep_compiles_once_and_vmaps():
    def run(q):
        return sd.sample_prior_guided(
            LEFT.score, SDE, q, key=KEY, num_samples=16, shape=(2,), num_steps=20
        ).x

    xs = _sweep(run, [0.1, 0.5, 0.9])
    # A Gaussian is score-aligned: a smaller latent norm ends nearer the mean.
    spread = [float(jnp.mean(jnp.sum((x - LEFT.means[0]) ** 2, axis=1))) for x in xs]
    assert spread[0] < spread[1] < spread[2]


def test_t_max_sweep_compiles_once_and_vmaps():
    x1 = jax.random.normal(KEY, (16, 2))

    def run(t_max):
        return sd.sample_ode(LEFT.score, SDE, x_init=x1, t_max=t_max, num_steps=20).x

    _sweep(run, [0.5, 0.8, 1.0])


def test_a_traced_bad_parameter_raises_at_run_time():
    run = eqx.filter_jit(lambda t: sd.Or(t).temperature + 0)
    assert float(run(jnp.asarray(2.0))) == 2.0
    with pytest.raises(eqx.EquinoxRuntimeError, match="positive temperature"):
        run(jnp.asarray(-1.0)).block_until_ready()
    with pytest.raises(ValueError, match="got T=-1"):  # known: at once
        sd.Or(-1.0)


def test_bits_per_dim_under_jit_equals_the_plain_call():
    images = jax.random.randint(KEY, (4, 2), 0, 256).astype(jnp.uint8)
    model = sd.GaussianMixture(np.zeros((1, 2)), np.array([0.3]), SDE)
    run = lambda im: sd.bits_per_dim(model.score, SDE, im, key=KEY, num_steps=20)
    plain = run(images)
    jitted = jax.jit(run)(images)
    np.testing.assert_allclose(jitted.extras["bpd"], plain.extras["bpd"], rtol=1e-10)
    with pytest.raises(eqx.EquinoxRuntimeError, match=r"\[0, 255\]"):
        bad = jnp.asarray(images, jnp.int32).at[0, 0].set(300)
        eqx.filter_jit(run)(bad).extras["bpd"].block_until_ready()


# ------------------------------------------------------------ capabilities


def test_an_operator_that_omits_its_declaration_is_refused_at_class_creation():
    with pytest.raises(TypeError, match="must declare `needs_density"):

        class Negation(sd.AbstractOperator):  # pyright: ignore[reportUnusedClass]
            def __call__(self, inputs):
                return jnp.array([2.0, -1.0])

    with pytest.raises(TypeError, match="must declare `ito_increment"):

        class Estimator(sd.AbstractDensityEstimator):  # pyright: ignore
            def increment(self, x, dx, score, f, g2, dtau):
                return jnp.zeros(())

    class AbstractLater(sd.AbstractOperator):  # an abstract one may leave it
        pass


def _library_classes() -> set[str]:
    names = set()
    for path in SRC.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and not node.name.startswith("Abstract"):
                names.add(node.name)
    return names


def test_no_dynamics_or_check_tests_for_a_concrete_library_class():
    concrete = _library_classes()
    found = []
    for folder in ("_term", "_operator", "_density", "_solve", "_model", "_sampler"):
        for path in (SRC / folder).glob("*.py"):
            for call in re.findall(
                r"isinstance\(\s*[\w.]+\s*,\s*([^)]*)\)", path.read_text()
            ):
                names = set(re.findall(r"\b(\w+)\b", call))
                if names & concrete:
                    found.append(f"{path.name}: isinstance(..., {call})")
    assert not found, found


def _calls(pattern: str, folders=("_sampler", "_solve", "_schedule", "_term")):
    found = []
    for folder in folders:
        for path in sorted((SRC / folder).glob("*.py")):
            for line in path.read_text().splitlines():
                code = line.split("#")[0]
                if "`" in code or code.lstrip().startswith("def "):
                    continue  # docstrings and definitions
                if re.search(pattern, code):
                    found.append(f"{folder}/{path.name}")
    return found


def test_one_place_splits_the_key_and_one_draws_the_starting_noise():
    # The starting noise: drawn by the schedule's `prior_sample`, called only by
    # the setup (sharded sampling draws through the setup's `draw_noise`).
    # (The schedule's other draw is `marginal_sample`, which noises data.)
    assert set(_calls(r"jax\.random\.normal\(")) == {"_schedule/base.py"}
    assert _calls(r"\bprior_sample\(") == ["_solve/setup.py"]
    # The key: split in one place, `split_key`, which every sampler uses (also to
    # divide its own half between two uses: dequantisation and probes, Brownian
    # motion and probes of stochastic guidance).
    assert _calls(r"jax\.random\.split\(") == ["_solve/setup.py"]
    users = _calls(r"\bsplit_key\(", ("_sampler", "_solve"))
    assert sorted(set(users)) == [
        "_sampler/guided.py",
        "_sampler/likelihood.py",
        "_sampler/sharded.py",
        "_solve/setup.py",
    ]


# ------------------------------------- answers that were silently wrong (#26)


def test_every_default_grid_keeps_one_gaussians_variance():
    # N(0, v I) exactly, 100 steps, 4e4 samples in d = 2: the sample variance's
    # standard error is sqrt(2 / 8e4) = 0.5 %, so 2 % is four of them. The log-SNR
    # grid measured 3.6-4.9 % too wide with the reverse SDE at 100 steps.
    v = 0.25
    gauss = sd.GaussianMixture(np.zeros((1, 2)), np.array([v]), SDE)
    common: dict[str, Any] = dict(
        key=KEY, num_samples=40_000, shape=(2,), num_steps=100
    )
    runs = {
        "sample": sd.sample(gauss.score, SDE, **common),
        "sample tracked": sd.sample(gauss.score, SDE, track_density=True, **common),
        "sample_ode": sd.sample_ode(gauss.score, SDE, **common),
        "guided": sd.sample_density_guided(
            gauss.score, SDE, sd.ScoreScale(1.0), **common
        ),
    }
    exact = v + float(SDE.sigma(SDE.t_min)) ** 2 * (1 - v)  # q at t_min
    for name, out in runs.items():
        ratio = float(jnp.var(out.x)) / exact
        assert abs(ratio - 1) < 0.02, f"{name}: variance / exact = {ratio:.4f}"


def test_log_prob_below_the_schedules_t_max_needs_the_models_density_there():
    model = sd.GaussianMixture(np.full((1, 4), 1.0), np.array([0.25]), SDE)
    x = model.sample(32, SDE.t_min, key=KEY)
    with pytest.raises(ValueError, match="log_q_t_max"):
        sd.log_prob_ode(model.score, SDE, x, t_max=0.5, num_steps=50)
    with pytest.raises(eqx.EquinoxRuntimeError, match="log_q_t_max"):
        run = eqx.filter_jit(lambda t: sd.log_prob_ode(model.score, SDE, x, t_max=t).x)
        run(jnp.asarray(0.5)).block_until_ready()
    # Given q_{t_max}, the answer is the model's (adaptive solve, 1e-5 tolerances).
    out = sd.log_prob_ode(
        model.score, SDE, x, t_max=0.5, log_q_t_max=lambda z: model.log_prob(0.5, z)
    )
    exact = jax.vmap(lambda v: model.log_prob(SDE.t_min, v))(x)
    assert out.log_q is not None
    np.testing.assert_allclose(out.log_q[:, 0], exact, atol=5e-3)


def test_and_refuses_an_estimator_whose_increments_it_cannot_equalise():
    with pytest.raises(ValueError, match="final within the step"):
        sd.sample(
            [LEFT.score, RIGHT.score], SDE, sd.And(), key=KEY, num_samples=4,
            shape=(2,), num_steps=5, estimator=sd.KernelRatioEstimator(),
        )  # fmt: skip
    with pytest.raises(ValueError, match="Itô's formula"):
        sd.sample(
            [LEFT.score, RIGHT.score], SDE, sd.And(curvature_correction=True),
            key=KEY, num_samples=4, shape=(2,), num_steps=5,
            estimator=sd.KernelRatioEstimator(curvature_correction=False),
        )  # fmt: skip


def test_inputs_once_accepted_without_a_word():
    common: dict[str, Any] = dict(key=KEY, num_samples=4, shape=(2,), num_steps=5)
    with pytest.raises(TypeError, match="floating-point scores; got dtype int32"):
        sd.sample(lambda t, x: jnp.zeros(2, jnp.int32), SDE, **common)
    with pytest.raises(ValueError, match="at least beta_min=30"):
        sd.VPSDE(beta_min=30.0, beta_max=20.0)
    with pytest.raises(ValueError, match="got 1 model"):
        sd.sample([LEFT.score], SDE, sd.Or(), **common)
    with pytest.raises(ValueError, match="implicit"):
        sd.sample_density_guided(
            LEFT.score, SDE, sd.DensityQuantile(0.5), solver=dfx.ImplicitEuler(),
            key=KEY, num_samples=4, shape=(2,), track_density=True,
        )  # fmt: skip
    # A temperature that overflows in float32 is the hard maximum, never NaN.
    log_q = jnp.array([-1.0, -3.0, -1.0], jnp.float32)
    inputs = sd.OperatorInputs(jnp.asarray(0.5), jnp.zeros(2), jnp.zeros((3, 2)), log_q)
    np.testing.assert_allclose(sd.Or(1e308)(inputs), [0.5, 0.0, 0.5])
    # AND of two identical scores: uniform weights, as the general solve gives.
    same = jnp.ones((2, 3))
    np.testing.assert_allclose(sd.and_weights_two(same, jnp.ones(3), 0.1), [0.5, 0.5])


def test_a_float32_score_feeds_one_dtype_into_the_tracked_state():
    f32 = lambda s: lambda t, x: s(t, x).astype(jnp.float32)
    out = sd.sample(
        [f32(LEFT.score), f32(RIGHT.score)], SDE, sd.Or(), key=KEY, num_samples=8,
        shape=(2,), num_steps=10,
    )  # fmt: skip
    assert out.x.dtype == jnp.float64 and out.log_q is not None
    assert out.log_q.dtype == jnp.float64
    assert math.isfinite(float(jnp.sum(out.log_q)))


# ------------------------------------------------------ docs/architecture.md


def test_the_architecture_drawing_matches_the_folders():
    text = (SRC.parents[1] / "docs" / "architecture.md").read_text()
    listed = set(re.findall(r"^\| `(_\w+)/` \|", text, re.M))
    folders = {p.name for p in SRC.iterdir() if p.is_dir() and p.name.startswith("_")}
    folders.discard("__pycache__")
    assert listed == folders
    for folder in folders:  # every member file is named in its row
        row = re.search(rf"^\| `{folder}/` \|.*$", text, re.M)
        assert row is not None
        for path in (SRC / folder).glob("*.py"):
            if path.name != "__init__.py":
                assert f"`{path.name}`" in row.group(0), (folder, path.name)


def test_adding_a_sampler_is_setup_term_solve():
    # The recipe of docs/architecture.md, "A sampler", written outside the library:
    # it gives `sample_ode`'s samples to the last bit.
    from superdiff._solve import integrate, setup

    def my_sample_ode(score, sde, **options):
        start = setup(
            sde, options, models=sd.score_family(score), default_solver=dfx.Tsit5(),
            ode=True,
        )  # fmt: skip
        term = dfx.ODETerm(sd.ProbabilityFlow(sde, score, start.t_max))
        y1, result = integrate(
            term, start.solver, sd.FlowState(start.x), start.steps, throw=start.throw
        )
        return sd.Samples(y1.x, result=result)

    common: dict[str, Any] = dict(key=KEY, num_samples=8, shape=(2,), num_steps=10)
    mine = my_sample_ode(LEFT.score, SDE, **common)
    np.testing.assert_array_equal(mine.x, sd.sample_ode(LEFT.score, SDE, **common).x)


def test_adding_a_schedule_is_log_alpha_and_log_sigma():
    # A path written from (α_t, σ_t) alone (VP's, here): f and g² follow by
    # autodiff (docs/math.md (1.3)) and equal VP's closed forms.
    class MyVP(sd.AbstractSDE):
        t_min: float = 1e-3
        t_max: float = 1.0

        def log_alpha(self, t):
            return jnp.asarray(-0.5 * (0.1 * t + 0.5 * 19.9 * t**2))

        def log_sigma(self, t):
            return 0.5 * jnp.log(-jnp.expm1(2 * self.log_alpha(t)))

    mine = MyVP()
    for t in (0.1, 0.5, 0.9):
        assert float(mine.drift_coef(t)) == pytest.approx(float(SDE.drift_coef(t)))
        assert float(mine.diffusion_squared(t)) == pytest.approx(
            float(SDE.diffusion_squared(t)), rel=1e-9
        )
    out = sd.sample_ode(LEFT.score, mine, key=KEY, num_samples=4, shape=(2,))
    assert out.result == sd.RESULTS.successful
