"""Convolution helpers shared by the image networks."""

import einops
import equinox as eqx
import jax
from jaxtyping import Array, Float


def channels_last_conv(
    conv: eqx.nn.Conv2d, x: Float[Array, "c_in h w"]
) -> Float[Array, "c_out h2 w2"]:
    """`conv(x)` for a zero-padded `eqx.nn.Conv2d`, with the same parameters and
    result, computed as a channels-last (NHWC) convolution.

    XLA:CPU runs channels-first convolutions inside a loop, such as the
    `diffeqsolve` of a sampler, with a generic kernel about 6× slower than the one
    it uses outside a loop (jax-ml/jax#12868; measured on a 3×3 conv of 32 channels
    at 14×14 and on `UNet.mnist`); channels-last convolutions run at full speed in
    both places, and the transposes cost little."""
    if conv.padding_mode != "ZEROS":
        raise ValueError(
            f"Expected a zero-padded convolution; got padding_mode={conv.padding_mode!r}."
        )
    y = jax.lax.conv_general_dilated(
        einops.rearrange(x, "c h w -> 1 h w c"),
        einops.rearrange(conv.weight, "o i h w -> h w i o"),
        window_strides=conv.stride,
        padding=conv.padding,
        rhs_dilation=conv.dilation,
        feature_group_count=conv.groups,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    y = einops.rearrange(y, "1 h w c -> c h w")
    return y if conv.bias is None else y + conv.bias
