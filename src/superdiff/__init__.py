"""superdiff: compose pre-trained diffusion models at inference time.

SuperDiff (Skreta et al., ICLR 2025) with the Itô density estimator, on Equinox and
Diffrax.
"""

from ._family import (
    AbstractScoreFamily as AbstractScoreFamily,
    ScoreTuple as ScoreTuple,
    StackedScores as StackedScores,
    score_family as score_family,
)
from ._mixture import GaussianMixture as GaussianMixture
from ._nets import (
    MLP as MLP,
    EpsilonScore as EpsilonScore,
    SinusoidalEmbedding as SinusoidalEmbedding,
)
from ._operators import (
    AbstractOperator as AbstractOperator,
    And as And,
    Average as Average,
    Or as Or,
    Single as Single,
    and_weights as and_weights,
    and_weights_two as and_weights_two,
)
from ._sample import Samples as Samples, sample as sample, sample_ode as sample_ode
from ._sde import (
    VESDE as VESDE,
    VPSDE as VPSDE,
    AbstractSDE as AbstractSDE,
    SubVPSDE as SubVPSDE,
)
from ._terms import (
    AbstractDensityEstimator as AbstractDensityEstimator,
    ItoEstimator as ItoEstimator,
    KernelRatioEstimator as KernelRatioEstimator,
    ReverseDrift as ReverseDrift,
    SuperpositionState as SuperpositionState,
    SuperpositionTerm as SuperpositionTerm,
    probability_flow_term as probability_flow_term,
    reverse_sde_terms as reverse_sde_terms,
)


__version__ = "0.1.0"
