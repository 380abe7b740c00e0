"""Networks: Equinox modules acting on one example, called as `(t, x)` (the noise
predictors, to wrap in `superdiff.EpsilonScore`) or `(x)` (the classifier)."""

from ._classifier import Classifier as Classifier
from ._mlp import MLP as MLP, SinusoidalEmbedding as SinusoidalEmbedding
from ._unet import UNet as UNet
