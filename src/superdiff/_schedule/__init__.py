"""Schedules: Gaussian paths $(\\alpha_t, \\sigma_t)$ and their forward SDEs."""

from .base import (
    AbstractSDE as AbstractSDE,
)
from .ve import (
    VESDE as VESDE,
)
from .vp import (
    VPSDE as VPSDE,
    SubVPSDE as SubVPSDE,
)
