"""Sample-quality metrics: distances between point clouds and between feature sets,
and a classifier's view of generated images (no Inception needed)."""

from ._classify import classify as classify
from ._metrics import (
    class_histogram as class_histogram,
    confident_share as confident_share,
    energy_distance as energy_distance,
    frechet_distance as frechet_distance,
    nearest_share as nearest_share,
)
