"""Sample-quality metrics: distances between point clouds and between feature sets,
a classifier's view of generated images (no Inception needed), and FID with the
standard Inception-v3 (its weights from the optional extra `fid`)."""

from ._classify import classify as classify
from ._fid import (
    FeatureStatistics as FeatureStatistics,
    dataset_statistics as dataset_statistics,
    default_cache_dir as default_cache_dir,
    fid as fid,
    inception_features as inception_features,
    model_digest as model_digest,
)
from ._inception import (
    InceptionV3 as InceptionV3,
    MissingWeightsError as MissingWeightsError,
    inception_weights_path as inception_weights_path,
    load_inception_weights as load_inception_weights,
)
from ._metrics import (
    class_histogram as class_histogram,
    confident_share as confident_share,
    energy_distance as energy_distance,
    frechet_distance as frechet_distance,
    gaussian_frechet_distance as gaussian_frechet_distance,
    nearest_share as nearest_share,
)
