"""Score alignment (Karczewski et al. 2025b, §5; `docs/math.md` §6)."""

from typing_extensions import Unpack

import diffrax as dfx
import jax
from jaxtyping import Array, Float

from .._density import AbstractDivergence, ExactDivergence
from .._model import ScoreFn, score_family
from .._schedule import AbstractSDE
from .._solve import NoiseOptions, Samples, fixed_probes, integrate, setup
from .._term import AlignmentState, ScoreAlignmentFlow
from .._util import inner


def score_alignment(
    score: ScoreFn,
    sde: AbstractSDE,
    x_init: Float[Array, "n *d"] | None = None,
    *,
    method: str = "jvp",
    divergence: AbstractDivergence | None = None,
    **options: Unpack[NoiseOptions],
) -> Samples:
    """Score alignment (Karczewski et al. 2025b, §5): for each latent $x_T$,
    $\\langle s_{t_{min}}(x_0),\\ D\\Phi(x_T)\\,s_{t_{max}}(x_T)\\rangle$, the data
    score against the push-forward of the noise score through the PF-ODE map
    $\\Phi$. It equals $\\langle\\nabla_{x_T}\\log q_{t_{min}}(\\Phi(x_T)),
    s_{t_{max}}(x_T)\\rangle$: positive means moving the latent up the prior's score
    (shrinking it, for a centred prior) raises $\\log q_0$ — then prior guidance
    with $q < 0.5$ raises it and $q > 0.5$ lowers it.

    - `method="jvp"`: the sensitivity ODE $dv/d\\tau = J_u v$ (one JVP per step),
        then the model's score at the end.
    - `method="divergence"`: the divergence-only variant, integrating
        $\\omega = \\langle s, v\\rangle$ by $d\\omega/d\\tau = -\\nabla\\cdot(J_u v)$
        with `divergence` (exact by default, or `Hutchinson`): no score needed at
        the end, so it also applies where that score is unreliable.

    The solve takes the `NoiseOptions`, as `sample_ode`; `key` draws Hutchinson
    probes.

    **Returns:** `Samples` with `x` the PF-ODE's samples and `extras["alignment"]`,
    `(n,)`.
    """
    if method not in ("jvp", "divergence"):
        raise ValueError(f"`method` must be 'jvp' or 'divergence'; got {method!r}.")
    if method == "jvp" and divergence is not None:
        raise ValueError("`divergence` only applies with `method='divergence'`.")
    if method == "divergence":
        divergence = ExactDivergence() if divergence is None else divergence
    if x_init is not None:
        options = {**options, "x_init": x_init}  # pyright: ignore[reportAssignmentType]
    start = setup(
        sde, options, models=score_family(score), default_solver=dfx.Tsit5(), ode=True
    )
    t_min, t_max, x = start.t_min, start.t_max, start.x
    probes = fixed_probes(divergence, x.shape, start)
    v = jax.vmap(lambda xi: score(t_max, xi))(x)
    y0 = AlignmentState(x, v, jax.vmap(inner)(v, v), probes)
    term = dfx.ODETerm(ScoreAlignmentFlow(sde, score, t_max, divergence))
    y1, result = integrate(term, start.solver, y0, start.steps, throw=start.throw)
    if divergence is not None:
        alignment = y1.omega
    else:
        s1 = jax.vmap(lambda xi: score(t_min, xi))(y1.x)
        alignment = jax.vmap(inner)(s1, y1.v)
    return Samples(y1.x, extras={"alignment": alignment}, result=result)
