"""A UNet noise-prediction network for images, in the style of DDPM and DDPM++
(Ho et al. 2020, App. B; Song et al. 2021, App. H)."""

import math
from collections.abc import Iterator, Sequence

import einops
import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ._conv import channels_last_conv
from ._mlp import SinusoidalEmbedding


def _key_stream(key: PRNGKeyArray) -> Iterator[PRNGKeyArray]:
    while True:
        key, subkey = jax.random.split(key)
        yield subkey


class ResidualBlock(eqx.Module):
    """DDPM's residual block on channels-first features `(C, H, W)` (Ho et al. 2020,
    App. B): GroupNorm, SiLU, 3×3 conv, plus a projection of the time embedding;
    GroupNorm, SiLU, dropout, 3×3 conv; a 1×1 conv on the skip path when the
    channel count changes. With `skip_rescale` the sum is divided by $\\sqrt 2$, as
    in DDPM++ (Song et al. 2021).

    Dropout is applied only when a `key` is given.
    """

    norm1: eqx.nn.GroupNorm
    conv1: eqx.nn.Conv2d
    time_projection: eqx.nn.Linear
    norm2: eqx.nn.GroupNorm
    dropout: eqx.nn.Dropout
    conv2: eqx.nn.Conv2d
    skip: eqx.nn.Conv2d | None
    skip_rescale: bool = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        time_dim: int,
        num_groups: int,
        dropout: float,
        skip_rescale: bool,
        *,
        key: PRNGKeyArray,
    ):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.norm1 = eqx.nn.GroupNorm(num_groups, in_channels)
        self.conv1 = eqx.nn.Conv2d(in_channels, out_channels, 3, padding=1, key=k1)
        self.time_projection = eqx.nn.Linear(time_dim, out_channels, key=k2)
        self.norm2 = eqx.nn.GroupNorm(num_groups, out_channels)
        self.dropout = eqx.nn.Dropout(dropout)
        self.conv2 = eqx.nn.Conv2d(out_channels, out_channels, 3, padding=1, key=k3)
        self.skip = (
            None
            if in_channels == out_channels
            else eqx.nn.Conv2d(in_channels, out_channels, 1, key=k4)
        )
        self.skip_rescale = skip_rescale

    def __call__(
        self,
        x: Float[Array, "c_in h w"],
        temb: Float[Array, " time_dim"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "c_out h w"]:
        h = channels_last_conv(self.conv1, jax.nn.silu(self.norm1(x)))
        h = h + einops.rearrange(self.time_projection(jax.nn.silu(temb)), "c -> c 1 1")
        h = jax.nn.silu(self.norm2(h))
        h = channels_last_conv(
            self.conv2, self.dropout(h, key=key, inference=key is None)
        )
        out = (x if self.skip is None else channels_last_conv(self.skip, x)) + h
        return out / math.sqrt(2.0) if self.skip_rescale else out


class AttentionBlock(eqx.Module):
    """Multi-head self-attention over the pixels of channels-first features
    `(C, H, W)`, after a GroupNorm, added back residually (Ho et al. 2020, App. B;
    Vaswani et al. 2017). With `skip_rescale` the sum is divided by $\\sqrt 2$ as in
    DDPM++ (Song et al. 2021).
    """

    norm: eqx.nn.GroupNorm
    attention: eqx.nn.MultiheadAttention
    skip_rescale: bool = eqx.field(static=True)

    def __init__(
        self,
        channels: int,
        num_heads: int,
        num_groups: int,
        skip_rescale: bool,
        *,
        key: PRNGKeyArray,
    ):
        self.norm = eqx.nn.GroupNorm(num_groups, channels)
        # No key bias: it adds the same logit to every key of a query, which the
        # softmax cancels, so it would be a parameter with an identically zero
        # gradient.
        self.attention = eqx.nn.MultiheadAttention(
            num_heads,
            channels,
            use_query_bias=True,
            use_key_bias=False,
            use_value_bias=True,
            use_output_bias=True,
            key=key,
        )
        self.skip_rescale = skip_rescale

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, "c h w"]:
        _, height, width = x.shape
        tokens = einops.rearrange(self.norm(x), "c h w -> (h w) c")
        attended = self.attention(tokens, tokens, tokens)
        out = x + einops.rearrange(attended, "(h w) c -> c h w", h=height, w=width)
        return out / math.sqrt(2.0) if self.skip_rescale else out


class Downsample(eqx.Module):
    """Halve the resolution with a stride-2 3×3 conv (DDPM's `resamp_with_conv`)."""

    conv: eqx.nn.Conv2d

    def __init__(self, channels: int, *, key: PRNGKeyArray):
        self.conv = eqx.nn.Conv2d(channels, channels, 3, stride=2, padding=1, key=key)

    def __call__(self, x: Float[Array, "c 2*h 2*w"]) -> Float[Array, "c h w"]:
        return channels_last_conv(self.conv, x)


class Upsample(eqx.Module):
    """Double the resolution: nearest-neighbour upsampling, then a 3×3 conv."""

    conv: eqx.nn.Conv2d

    def __init__(self, channels: int, *, key: PRNGKeyArray):
        self.conv = eqx.nn.Conv2d(channels, channels, 3, padding=1, key=key)

    def __call__(self, x: Float[Array, "c h w"]) -> Float[Array, "c 2*h 2*w"]:
        return channels_last_conv(self.conv, einops.repeat(x, "c h w -> c (h 2) (w 2)"))


class _Level(eqx.Module):
    """The blocks of one resolution on one side of the UNet; `attentions[i]` (or
    `None`) follows `blocks[i]`, and `resample` (if any) follows them all."""

    blocks: tuple[ResidualBlock, ...]
    attentions: tuple[AttentionBlock | None, ...]
    resample: Downsample | Upsample | None


class UNet(eqx.Module):
    """A UNet predicting the noise $\\hat\\varepsilon(t, x)$ of one image, in the
    style of DDPM (Ho et al. 2020, App. B) and DDPM++ (Song et al. 2021, App. H).
    Wrap it in `superdiff.EpsilonScore` for a score.

    The image is **channels-last**, `(H, W, C)`, as image data sets store it; batch
    with `jax.vmap`. Time enters through a sinusoidal embedding and a two-layer MLP,
    added (through its own linear map) inside every residual block.

    The layout: a 3×3 conv to `base_channels`; then, for each entry `m` of
    `channel_mults` (one per resolution, from the input's downwards),
    `num_res_blocks` residual blocks with `base_channels * m` channels, each
    followed by self-attention if the resolution is in `attention_resolutions`,
    then a stride-2 conv halving the resolution (except after the last); a middle
    of residual block, attention, residual block; the mirror image upwards with
    `num_res_blocks + 1` blocks per resolution, each taking the matching
    downward activation as a skip connection (concatenated), and
    nearest-neighbour upsampling; GroupNorm, SiLU and a 3×3 conv back to `C`
    channels.

    Unlike DDPM, no layer is initialised to zero: every parameter gets a gradient
    from the first step.

    **Arguments:**

    - `image_shape`: `(H, W, C)`. Each resolution but the last must be even, so
      `H` and `W` must be divisible by `2 ** (len(channel_mults) - 1)`.
    - `base_channels`: channels at the first resolution; even, and divisible by
      `num_groups`.
    - `channel_mults`: channel multiplier per resolution.
    - `num_res_blocks`: residual blocks per resolution on the way down.
    - `attention_resolutions`: the side lengths (image heights at a level, e.g.
      `(16,)` for CIFAR-10) at which attention follows each residual block. The
      middle always has attention.
    - `dropout`: dropout rate in each residual block (before its second conv, as
      in DDPM), used only when `__call__` gets a `key`; train with
      `superdiff.train.dsm_loss(..., dropout=True)`, which gives every example its
      own key.
    - `num_groups`: groups of every GroupNorm.
    - `num_heads`: attention heads; must divide the channels where attention is.
    - `skip_rescale`: divide each residual sum by $\\sqrt 2$ (DDPM++); `False` is
      DDPM.
    - `key`: for the initialisation.

    !!! cite

        Ho, Jain and Abbeel, *Denoising Diffusion Probabilistic Models*, NeurIPS
        2020. Song, Sohl-Dickstein, Kingma, Kumar, Ermon and Poole, *Score-Based
        Generative Modeling through Stochastic Differential Equations*, ICLR 2021.
    """

    embedding: SinusoidalEmbedding
    time_mlp: eqx.nn.MLP
    input_conv: eqx.nn.Conv2d
    down: tuple[_Level, ...]
    middle: tuple[ResidualBlock, AttentionBlock, ResidualBlock]
    up: tuple[_Level, ...]
    output_norm: eqx.nn.GroupNorm
    output_conv: eqx.nn.Conv2d
    image_shape: tuple[int, int, int] = eqx.field(static=True)
    base_channels: int = eqx.field(static=True)
    channel_mults: tuple[int, ...] = eqx.field(static=True)
    num_res_blocks: int = eqx.field(static=True)
    attention_resolutions: tuple[int, ...] = eqx.field(static=True)
    dropout: float = eqx.field(static=True)
    num_groups: int = eqx.field(static=True)
    num_heads: int = eqx.field(static=True)

    def __init__(
        self,
        image_shape: Sequence[int],
        base_channels: int = 64,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (),
        dropout: float = 0.1,
        num_groups: int = 8,
        num_heads: int = 1,
        skip_rescale: bool = True,
        *,
        key: PRNGKeyArray,
    ):
        image_shape = tuple(int(s) for s in image_shape)
        channel_mults = tuple(int(m) for m in channel_mults)
        attention_resolutions = tuple(int(r) for r in attention_resolutions)
        _check_config(
            image_shape,
            base_channels,
            channel_mults,
            num_res_blocks,
            attention_resolutions,
            dropout,
            num_groups,
            num_heads,
        )
        height, width, channels = image_shape
        self.image_shape = (height, width, channels)
        self.base_channels = base_channels
        self.channel_mults = channel_mults
        self.num_res_blocks = num_res_blocks
        self.attention_resolutions = attention_resolutions
        self.dropout = dropout
        self.num_groups = num_groups
        self.num_heads = num_heads

        keys = _key_stream(key)
        time_dim = 4 * base_channels
        self.embedding = SinusoidalEmbedding(base_channels)
        self.time_mlp = eqx.nn.MLP(
            base_channels,
            time_dim,
            time_dim,
            depth=1,
            activation=jax.nn.silu,
            key=next(keys),
        )
        self.input_conv = eqx.nn.Conv2d(
            channels, base_channels, 3, padding=1, key=next(keys)
        )

        def residual(c_in: int, c_out: int) -> ResidualBlock:
            return ResidualBlock(
                c_in, c_out, time_dim, num_groups, dropout, skip_rescale, key=next(keys)
            )

        def attention(c: int, resolution: int) -> AttentionBlock | None:
            if resolution not in attention_resolutions:
                return None
            return AttentionBlock(
                c, num_heads, num_groups, skip_rescale, key=next(keys)
            )

        last = len(channel_mults) - 1
        c_in = base_channels
        skip_channels = [c_in]
        down = []
        for i, mult in enumerate(channel_mults):
            c_out = base_channels * mult
            blocks, attentions = [], []
            for _ in range(num_res_blocks):
                blocks.append(residual(c_in, c_out))
                attentions.append(attention(c_out, height >> i))
                c_in = c_out
                skip_channels.append(c_in)
            resample = None
            if i != last:
                resample = Downsample(c_in, key=next(keys))
                skip_channels.append(c_in)
            down.append(_Level(tuple(blocks), tuple(attentions), resample))
        self.down = tuple(down)

        self.middle = (
            residual(c_in, c_in),
            AttentionBlock(c_in, num_heads, num_groups, skip_rescale, key=next(keys)),
            residual(c_in, c_in),
        )

        up = []
        for i, mult in reversed(list(enumerate(channel_mults))):
            c_out = base_channels * mult
            blocks, attentions = [], []
            for _ in range(num_res_blocks + 1):
                blocks.append(residual(c_in + skip_channels.pop(), c_out))
                attentions.append(attention(c_out, height >> i))
                c_in = c_out
            resample = Upsample(c_in, key=next(keys)) if i != 0 else None
            up.append(_Level(tuple(blocks), tuple(attentions), resample))
        self.up = tuple(up)
        assert not skip_channels

        self.output_norm = eqx.nn.GroupNorm(num_groups, c_in)
        self.output_conv = eqx.nn.Conv2d(c_in, channels, 3, padding=1, key=next(keys))

    @classmethod
    def mnist(cls, *, dropout: float = 0.1, key: PRNGKeyArray) -> "UNet":
        """A small UNet for 28×28×1 images (MNIST), sized for two CPU cores
        (0.7-1.8 s per training step at batch 64, by the day; 1200 steps draw
        clean digits): resolutions 28 → 14 → 7 with 16, 32, 64 channels, one
        residual block per resolution, attention (4 heads) at 7×7 and in the
        middle; 686,513 parameters.

        Channels grow as the resolution falls because on a CPU the cost is in the
        convolutions at high resolution, and the parameters at low resolution."""
        return cls(
            (28, 28, 1),
            base_channels=16,
            channel_mults=(1, 2, 4),
            num_res_blocks=1,
            attention_resolutions=(7,),
            dropout=dropout,
            num_groups=8,
            num_heads=4,
            key=key,
        )

    @classmethod
    def cifar10(
        cls,
        *,
        base_channels: int = 128,
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16, 8),
        dropout: float = 0.1,
        num_groups: int = 32,
        key: PRNGKeyArray,
    ) -> "UNet":
        """The UNet of Skreta et al.'s CIFAR-10 experiment, DDPM's CIFAR-10 network
        (Ho et al. 2020, App. B) with attention also at 8×8: 32×32×3 images,
        resolutions 32 → 16 → 8 → 4 with 128, 256, 256, 256 channels (channel
        multipliers (1, 2, 2, 2)), two residual blocks per resolution, attention
        (one head) at 16×16 and 8×8 and in the middle, dropout 0.1, GroupNorm with
        32 groups; 37,061,891 parameters. For GPUs.

        With `attention_resolutions=(16,)` it is DDPM's own network, 35,744,771
        parameters (DDPM reports 35.7M). The other arguments make smaller networks
        of the same shape; `cifar10_small` is one sized for a CPU."""
        return cls(
            (32, 32, 3),
            base_channels=base_channels,
            channel_mults=(1, 2, 2, 2),
            num_res_blocks=num_res_blocks,
            attention_resolutions=attention_resolutions,
            dropout=dropout,
            num_groups=num_groups,
            num_heads=1,
            key=key,
        )

    @classmethod
    def cifar10_small(cls, *, dropout: float = 0.1, key: PRNGKeyArray) -> "UNet":
        """`cifar10`'s layout at a quarter of the width and half the depth, for a
        CPU: 32, 64, 64, 64 channels, one residual block per resolution, attention
        at 16×16, 8×8 and in the middle, GroupNorm with 8 groups; 1,575,267
        parameters."""
        return cls.cifar10(
            base_channels=32,
            num_res_blocks=1,
            dropout=dropout,
            num_groups=8,
            key=key,
        )

    def __call__(
        self,
        t: Float[ArrayLike, ""],
        x: Float[Array, "height width channels"],
        *,
        key: PRNGKeyArray | None = None,
    ) -> Float[Array, "height width channels"]:
        """**Arguments:**

        - `t`: the time, a scalar (in `[0, 1]` for the SDEs here).
        - `x`: one image, channels-last `(H, W, C)` of the configured shape.
        - `key`: dropout randomness; `None` (the default) means inference: no
          dropout.

        **Returns:** $\\hat\\varepsilon(t, x)$, of the shape of `x` and, if `x` is
        floating-point, its dtype (it is computed in the parameters' dtype).
        """
        if jnp.shape(t) != ():
            raise ValueError(f"UNet takes a scalar time; got shape {jnp.shape(t)}.")
        if x.shape != self.image_shape:
            raise ValueError(
                f"UNet acts on one channels-last image of shape (H, W, C) = "
                f"{self.image_shape} (vmap for batches); got shape {x.shape}."
            )
        if self.dropout == 0:
            key = None  # nothing to draw: skip generating the masks
        num_blocks = 2 + (2 * self.num_res_blocks + 1) * len(self.channel_mults)
        block_keys = iter(
            [None] * num_blocks if key is None else jax.random.split(key, num_blocks)
        )
        # Convolutions need one dtype: compute in the parameters', answer in x's.
        dtype = self.input_conv.weight.dtype
        temb = self.time_mlp(self.embedding(t).astype(dtype))
        h = channels_last_conv(
            self.input_conv, einops.rearrange(x.astype(dtype), "h w c -> c h w")
        )
        skips = [h]
        for level in self.down:
            for block, attention in zip(level.blocks, level.attentions, strict=True):
                h = block(h, temb, key=next(block_keys))
                if attention is not None:
                    h = attention(h)
                skips.append(h)
            if level.resample is not None:
                h = level.resample(h)
                skips.append(h)
        first, attention, second = self.middle
        h = first(h, temb, key=next(block_keys))
        h = attention(h)
        h = second(h, temb, key=next(block_keys))
        for level in self.up:
            for block, attention in zip(level.blocks, level.attentions, strict=True):
                h = jnp.concatenate([h, skips.pop()], axis=0)
                h = block(h, temb, key=next(block_keys))
                if attention is not None:
                    h = attention(h)
            if level.resample is not None:
                h = level.resample(h)
        h = channels_last_conv(self.output_conv, jax.nn.silu(self.output_norm(h)))
        out_dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else dtype
        return einops.rearrange(h, "c h w -> h w c").astype(out_dtype)


def _check_config(
    image_shape: tuple[int, ...],
    base_channels: int,
    channel_mults: tuple[int, ...],
    num_res_blocks: int,
    attention_resolutions: tuple[int, ...],
    dropout: float,
    num_groups: int,
    num_heads: int,
) -> None:
    if len(image_shape) != 3 or min(image_shape) < 1:
        raise ValueError(
            f"`image_shape` must be (H, W, C) with positive entries; got {image_shape}."
        )
    if base_channels < 2 or base_channels % 2:
        raise ValueError(
            f"`base_channels` must be an even integer >= 2; got {base_channels}."
        )
    if not channel_mults or min(channel_mults) < 1:
        raise ValueError(
            "`channel_mults` must be a non-empty sequence of positive integers; got "
            f"{channel_mults}."
        )
    if num_res_blocks < 1:
        raise ValueError(f"`num_res_blocks` must be positive; got {num_res_blocks}.")
    if not 0 <= dropout < 1:
        raise ValueError(f"`dropout` must lie in [0, 1); got {dropout}.")
    if num_groups < 1 or base_channels % num_groups:
        raise ValueError(
            f"`num_groups` must be a positive divisor of `base_channels` = "
            f"{base_channels} (so that it divides every GroupNorm's channels); got "
            f"{num_groups}."
        )
    height, width, _ = image_shape
    sizes = [(height >> i, width >> i) for i in range(len(channel_mults))]
    for i in range(len(channel_mults) - 1):
        h, w = height >> i, width >> i
        if h % 2 or w % 2:
            raise ValueError(
                f"An image of size {height}x{width} cannot be downsampled "
                f"{len(channel_mults) - 1} times, as `channel_mults` = "
                f"{channel_mults} asks: resolution {i} is {h}x{w}, which does not "
                f"halve evenly. Use at most {i + 1} multipliers, or pad the images."
            )
    heights = [h for h, _ in sizes]
    for resolution in attention_resolutions:
        if resolution not in heights:
            raise ValueError(
                f"`attention_resolutions` = {attention_resolutions} names "
                f"{resolution}, which is not a resolution of this UNet; for a "
                f"{height}x{width} image and `channel_mults` = {channel_mults} the "
                f"resolutions (heights) are {heights}."
            )
    attention_channels = {
        base_channels * m
        for m, h in zip(channel_mults, heights, strict=True)
        if h in attention_resolutions
    } | {base_channels * channel_mults[-1]}
    if num_heads < 1 or any(c % num_heads for c in attention_channels):
        raise ValueError(
            f"`num_heads` must be a positive divisor of the channel count at every "
            f"attention layer ({sorted(attention_channels)}); got {num_heads}."
        )
