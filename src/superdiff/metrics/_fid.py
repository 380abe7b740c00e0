"""FID (Heusel et al. 2017): Inception features of many images, their Gaussian
statistics, cached statistics of a data set, and the Fréchet distance between two
such Gaussians."""

import dataclasses
import hashlib
import os
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Shaped
from tqdm.auto import tqdm

from ..data._images import ImageSource
from ._inception import InceptionV3
from ._metrics import gaussian_frechet_distance


@eqx.filter_jit
def _features(model: InceptionV3, images: Array) -> Array:
    if images.dtype == jnp.uint8:
        images = images.astype(jnp.float32) / 127.5 - 1
    return jax.vmap(model)(images)


def inception_features(
    model: InceptionV3,
    images: Shaped[ArrayLike, "n h w 3"],
    batch_size: int = 50,
    progress: bool = True,
) -> Float[np.ndarray, "n 2048"]:
    """The `pool_3` features of many channels-last images, `batch_size` at a time
    (the last chunk padded, so one compilation serves all), with a progress bar.

    **Arguments:**

    - `model`: the network, e.g. `InceptionV3.pretrained()`.
    - `images`: uint8 pixels in $[0, 255]$, or floats in $[-1, 1]$.
    - `batch_size`: images per call of the compiled network.
    - `progress`: show a `tqdm` progress bar.

    **Returns:** a float32 NumPy array `(n, 2048)`.
    """
    array = np.asarray(images)
    if array.ndim != 4 or array.shape[-1] != 3 or array.shape[0] == 0:
        raise ValueError(
            "Expected a non-empty batch of channels-last RGB images (n, h, w, 3); "
            f"got shape {array.shape}."
        )
    if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
        raise ValueError(
            f"Expected uint8 pixels or floats in [-1, 1]; got dtype {array.dtype}."
        )
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be at least 1; got {batch_size}.")
    n = array.shape[0]
    size = min(batch_size, n)
    out = np.empty((n, 2048), np.float32)
    with tqdm(total=n, unit="img", desc="Inception", disable=not progress) as bar:
        for start in range(0, n, size):
            chunk = array[start : start + size]
            pad = size - chunk.shape[0]
            if pad:
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
            out[start : start + size - pad] = np.asarray(
                _features(model, jnp.asarray(chunk))
            )[: size - pad]
            bar.update(size - pad)
    return out


@dataclasses.dataclass(frozen=True)
class FeatureStatistics:
    """The mean and covariance of a set of features (e.g. Inception `pool_3`
    features of a data set), and how many features they summarise: what FID
    compares. `save`/`load` write and read them as `.npz` (`mu`, `sigma`, `count`).
    """

    mu: Float[np.ndarray, " f"]
    sigma: Float[np.ndarray, "f f"]
    count: int

    def __post_init__(self):
        f = self.mu.shape[0] if self.mu.ndim == 1 else -1
        if self.sigma.shape != (f, f):
            raise ValueError(
                "Expected a mean (f,) and a covariance (f, f); got shapes "
                f"{self.mu.shape} and {self.sigma.shape}."
            )

    @classmethod
    def of(cls, features: Float[ArrayLike, "n f"]) -> "FeatureStatistics":
        """The statistics of `features` (float64; unbiased covariance)."""
        x = np.asarray(features, np.float64)
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(
                f"Expected at least 2 features (n, f); got shape {x.shape}."
            )
        return cls(x.mean(0), np.cov(x, rowvar=False), x.shape[0])

    def save(self, path: str | Path) -> None:
        """Write to `path` (`.npz`), atomically (a temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(temporary, "wb") as file:
            np.savez(file, mu=self.mu, sigma=self.sigma, count=self.count)
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: str | Path) -> "FeatureStatistics":
        """Read statistics written by `save`."""
        with np.load(path) as data:
            return cls(data["mu"], data["sigma"], int(data["count"]))

    def frechet_distance(self, other: "FeatureStatistics") -> float:
        """The Fréchet distance between the Gaussians of `self` and `other`."""
        return gaussian_frechet_distance(self.mu, self.sigma, other.mu, other.sigma)


def model_digest(model: InceptionV3) -> str:
    """A short SHA-256 of the network's weights and input setting: equal for the
    same weights, so it keys cached statistics."""
    digest = hashlib.sha256(f"resize={model.resize}".encode())
    for leaf in jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_array)):
        digest.update(np.asarray(leaf).tobytes())
    return digest.hexdigest()[:16]


def default_cache_dir() -> Path:
    """`$XDG_CACHE_HOME/superdiff/fid`, or `~/.cache/superdiff/fid`."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "superdiff" / "fid"


def dataset_statistics(
    model: InceptionV3,
    source: ImageSource,
    name: str,
    count: int | None = None,
    *,
    cache_dir: str | Path | None = None,
    batch_size: int = 50,
    progress: bool = True,
) -> FeatureStatistics:
    """The Inception statistics of the first `count` images of `source` (all by
    default), read from the cache if computed before and written there if not.

    **Arguments:**

    - `model`: the network, e.g. `InceptionV3.pretrained()`.
    - `source`: the images, e.g. `sd.data.load_images("cifar10", "train", path)`.
    - `name`: names the data set and split in the cache, e.g. `"cifar10-train"`.
    - `count`: how many images, from the first.
    - `cache_dir`: where statistics are kept, as
        `<name>-<count>-<model_digest>.npz`; default `default_cache_dir()`.
    - `batch_size`, `progress`: as in `inception_features`.
    """
    total = len(source)
    count = total if count is None else count
    if not 2 <= count <= total:
        raise ValueError(
            f"`count` must be between 2 and the {total} images of {name!r}; got "
            f"{count}."
        )
    if not name or any(c in name for c in "/\\"):
        raise ValueError(f"`name` must be a plain file-name part; got {name!r}.")
    folder = default_cache_dir() if cache_dir is None else Path(cache_dir)
    path = folder / f"{name}-{count}-{model_digest(model)}.npz"
    if path.exists():
        return FeatureStatistics.load(path)
    images = source.gather(np.arange(count))["image"]
    stats = FeatureStatistics.of(
        inception_features(model, images, batch_size=batch_size, progress=progress)
    )
    stats.save(path)
    return stats


def fid(
    model: InceptionV3,
    images: Shaped[ArrayLike, "n h w 3"],
    reference: FeatureStatistics | Shaped[ArrayLike, "m h w 3"],
    *,
    batch_size: int = 50,
    progress: bool = True,
) -> float:
    """The Fréchet Inception Distance (Heusel et al. 2017) of `images` to
    `reference`, statistics (e.g. from `dataset_statistics`) or images.
    Images are uint8 in $[0, 255]$ or floats in $[-1, 1]$, channels last.

    Biased upwards at small sample sizes: compare only FIDs from equally many
    images (the literature uses 50,000 against the training set)."""
    if not isinstance(reference, FeatureStatistics):
        reference = FeatureStatistics.of(
            inception_features(model, reference, batch_size, progress)
        )
    own = FeatureStatistics.of(inception_features(model, images, batch_size, progress))
    return own.frechet_distance(reference)
