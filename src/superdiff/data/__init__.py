"""Data: the two-moons toy distribution, and image data sets (MNIST, CIFAR-10) with
the shuffled, batched, resumable pipeline over them."""

from ._images import (
    DataNotFoundError as DataNotFoundError,
    ImageArrays as ImageArrays,
    ImageSource as ImageSource,
    image_batches as image_batches,
    load_images as load_images,
    select_classes as select_classes,
)
from ._two_moons import two_moons as two_moons
