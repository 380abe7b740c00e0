"""Diffrax terms: the reverse SDE, the probability flow, superposition, guidance."""

from .alignment import (
    AlignmentState as AlignmentState,
    ScoreAlignmentFlow as ScoreAlignmentFlow,
)
from .flow import (
    FlowState as FlowState,
    ProbabilityFlow as ProbabilityFlow,
)
from .reverse_sde import (
    ReverseDiffusion as ReverseDiffusion,
    ReverseDrift as ReverseDrift,
    reverse_sde_terms as reverse_sde_terms,
)
from .stochastic_guidance import (
    StochasticGuidanceTerm as StochasticGuidanceTerm,
)
from .superposition import (
    SuperpositionState as SuperpositionState,
    SuperpositionTerm as SuperpositionTerm,
)
