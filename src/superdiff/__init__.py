"""superdiff: compose pre-trained diffusion models at inference time.

SuperDiff (Skreta et al., ICLR 2025) with the Itô density estimator, on Equinox and
Diffrax.
"""

from . import (
    data as data,
    experiment as experiment,
    metrics as metrics,
    nn as nn,
    train as train,
)
from ._density import (
    AbstractDensityEstimator as AbstractDensityEstimator,
    AbstractDivergence as AbstractDivergence,
    ExactDivergence as ExactDivergence,
    Hutchinson as Hutchinson,
    ItoEstimator as ItoEstimator,
    KernelRatioEstimator as KernelRatioEstimator,
)
from ._guidance import (
    AbstractGuidance as AbstractGuidance,
    DensityQuantile as DensityQuantile,
    DensityRate as DensityRate,
    ScoreScale as ScoreScale,
    SwitchedScoreScale as SwitchedScoreScale,
)
from ._model import (
    AbstractScoreFamily as AbstractScoreFamily,
    EpsilonScore as EpsilonScore,
    GaussianMixture as GaussianMixture,
    ScoreTuple as ScoreTuple,
    StackedScores as StackedScores,
    score_family as score_family,
)
from ._operator import (
    AbstractOperator as AbstractOperator,
    And as And,
    Average as Average,
    OperatorInputs as OperatorInputs,
    Or as Or,
    Single as Single,
    WeightedScore as WeightedScore,
    and_weights as and_weights,
    and_weights_two as and_weights_two,
)
from ._sampler import (
    GuidedOptions as GuidedOptions,
    bits_per_dim as bits_per_dim,
    bits_per_dim_offset as bits_per_dim_offset,
    dequantize as dequantize,
    log_prob_ode as log_prob_ode,
    prior_guidance as prior_guidance,
    sample as sample,
    sample_density_guided as sample_density_guided,
    sample_high_density as sample_high_density,
    sample_ode as sample_ode,
    sample_ode_with_density as sample_ode_with_density,
    sample_prior_guided as sample_prior_guided,
    sample_sharded as sample_sharded,
    score_alignment as score_alignment,
    sharded_noise as sharded_noise,
)
from ._schedule import (
    VESDE as VESDE,
    VPSDE as VPSDE,
    AbstractSDE as AbstractSDE,
    SubVPSDE as SubVPSDE,
)
from ._solve import (
    RESULTS as RESULTS,
    Samples as Samples,
    SolveOptions as SolveOptions,
    time_grid as time_grid,
)
from ._term import (
    AlignmentState as AlignmentState,
    FlowState as FlowState,
    ProbabilityFlow as ProbabilityFlow,
    ReverseDiffusion as ReverseDiffusion,
    ReverseDrift as ReverseDrift,
    ScoreAlignmentFlow as ScoreAlignmentFlow,
    StochasticGuidanceTerm as StochasticGuidanceTerm,
    SuperpositionState as SuperpositionState,
    SuperpositionTerm as SuperpositionTerm,
    reverse_sde_terms as reverse_sde_terms,
)


__version__ = "0.1.0"
