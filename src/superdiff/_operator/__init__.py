"""Superposition operators: how M scores are weighted at each step."""

from .and_ import (
    And as And,
    and_weights as and_weights,
    and_weights_two as and_weights_two,
)
from .base import (
    AbstractOperator as AbstractOperator,
    OperatorInputs as OperatorInputs,
    WeightedScore as WeightedScore,
    weighted_sum as weighted_sum,
)
from .fixed import (
    Average as Average,
    Single as Single,
)
from .or_ import (
    Or as Or,
)
