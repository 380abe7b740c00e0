"""Models: score families (M models as one callable), parameterisations, exact mixtures."""

from .family import (
    AbstractScoreFamily as AbstractScoreFamily,
    ScoreFn as ScoreFn,
    ScoreTuple as ScoreTuple,
    StackedScores as StackedScores,
    batched as batched,
    score_family as score_family,
)
from .mixture import (
    GaussianMixture as GaussianMixture,
)
from .parameterisation import (
    EpsilonScore as EpsilonScore,
)
