"""Density estimators (Δ log q per reverse step) and divergences."""

from .divergence import (
    AbstractDivergence as AbstractDivergence,
    ExactDivergence as ExactDivergence,
    Hutchinson as Hutchinson,
)
from .estimator import (
    AbstractDensityEstimator as AbstractDensityEstimator,
    ItoEstimator as ItoEstimator,
    KernelRatioEstimator as KernelRatioEstimator,
)
