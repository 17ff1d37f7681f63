"""Antialiased bicubic resize of uint8 images, bit for bit what PyTorch computes on CPU, in numpy.

The Qwen2-VL image processor (transformers, torchvision backend) resizes each uint8 CHW image with
``torchvision.transforms.v2.functional.resize(..., BICUBIC, antialias=True)``, which on CPU runs
``torch.nn.functional.interpolate(uint8, mode="bicubic", antialias=True, align_corners=False)``
directly on the uint8 tensor. On an AVX2 machine that is PyTorch's Pillow-SIMD port
(``upsample_avx_bilinear_bicubic_uint8`` in ``aten/src/ATen/native/cpu/UpSampleKernelAVXAntialias.h``);
elsewhere (``ATEN_CPU_CAPABILITY=default``, AVX-512 builds) it is the generic separable kernel in
``UpSampleKernel.cpp``. Both do the same integer arithmetic, reproduced here:

1. Per axis, ``scale = in / out`` and the Keys cubic filter (a = -0.5) is stretched by ``scale`` when
   downscaling (support ``2 * scale``, taps evaluated at ``distance / scale``) and left at support 2
   when upscaling. Output ``i`` has centre ``scale * (i + 0.5)``; its taps are the input pixels
   ``xmin .. xmin + xsize - 1`` with ``xmin = max(int(centre - support + 0.5), 0)`` and
   ``xsize = min(int(centre + support + 0.5), in) - xmin``, each weighted
   ``filter((x - centre + 0.5) * min(1, 1 / scale))``; the weights are divided by their sum.
2. The weights become int16 fixed point with a per-axis precision ``p``: the largest weight times
   ``2 ** (p + 1)`` first reaching 2 ** 15 (``p`` at most 22); each weight is ``w * 2 ** p`` rounded
   half away from zero.
3. The horizontal pass runs first (skipped when the width is unchanged), then the vertical pass
   (skipped when the height is unchanged). Each output is ``sum(pixel * weight) + 2 ** (p - 1)`` in
   exact integer arithmetic, shifted right by ``p`` (floor) and clamped to 0..255; the horizontal
   result is stored as uint8 before the vertical pass reads it.

The double-precision steps (1, 2) are evaluated here in the same order of operations as the C++ code,
so the int16 tables are identical (checked against torch for thousands of size pairs). The integer sums
(3) are BLAS matrix products on banded blocks of the weight matrix, with weights pre-scaled by
``2 ** -p`` (exact) and pixels centred on 128. They run in float32 where that is provably exact (see
``_banded_pass``: any upscale, and downscales by up to about 4x) and in float64 otherwise, so
the results are the integers PyTorch computes, in any summation order. Only numpy is needed: the
serving process does not import torch.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["resize_bicubic", "weight_table"]

_CUBIC_A = -0.5  # Keys' cubic, as Pillow and PyTorch use it for antialiased bicubic
_MAX_PRECISION = 22  # PyTorch tries precisions 0 .. 21 and stops at 22
_BLOCK = 8  # outputs per banded block (one matrix product each): measured best or near it for 0.5x..8x
_FLOAT32_EXACT = 1 << 24  # integers below this are exact in float32
_CHUNK_BYTES = 32 * 1024 * 1024  # float working copy of the input, per chunk of rows


@dataclass(frozen=True)
class WeightTable:
    """PyTorch's fixed-point filter for one axis resized from ``in_size`` to ``out_size`` pixels.

    Output pixel ``i`` reads input pixels ``xmin[i] .. xmin[i] + xsize[i] - 1`` with the int16
    weights ``weights[i, :xsize[i]]`` (the rest of the row is zero); sums are shifted by ``precision``.
    """

    xmin: np.ndarray  # int64 [out_size]
    xsize: np.ndarray  # int64 [out_size]
    weights: np.ndarray  # int16 [out_size, taps]
    precision: int


def _cubic_filter(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5, evaluated as PyTorch's ``aa_filter`` does."""
    a = _CUBIC_A
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=64)
def weight_table(in_size: int, out_size: int) -> WeightTable:
    """PyTorch's antialiased bicubic int16 weights for one axis (``align_corners=False``, no scale factor).

    Mirrors ``_compute_indices_min_size_weights_aa`` and ``_compute_index_ranges_int16_weights``:
    same double-precision expressions in the same order, sequential sum of the weights, the same
    precision search and the same rounding, so the tables match PyTorch's exactly.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")
    scale = in_size / out_size
    support = 2.0 * scale if scale >= 1.0 else 2.0
    taps = math.ceil(support) * 2 + 1
    invscale = 1.0 / scale if scale >= 1.0 else 1.0

    centre = scale * (np.arange(out_size, dtype=np.float64) + 0.5)
    # C++ truncates toward zero, then takes max(., 0): identical to max(trunc(.), 0).
    xmin = np.maximum(np.trunc(centre - support + 0.5), 0.0).astype(np.int64)
    xmax = np.minimum(np.trunc(centre + support + 0.5).astype(np.int64), in_size)
    xsize = np.clip(xmax - xmin, 0, taps)

    j = np.arange(taps, dtype=np.int64)
    position = (xmin[:, None] + j[None, :]).astype(np.float64)
    weights = _cubic_filter((position - centre[:, None] + 0.5) * invscale)
    weights[j[None, :] >= xsize[:, None]] = 0.0

    total = np.zeros(out_size, dtype=np.float64)
    for k in range(taps):  # left to right, like the C++ loop (np.sum would sum pairwise)
        total = total + weights[:, k]
    normalised = total != 0.0
    weights[normalised] = weights[normalised] / total[normalised, None]
    wt_max = float(weights[normalised].max(initial=0.0))

    precision = 0
    while precision < _MAX_PRECISION:
        if int(0.5 + wt_max * (1 << (precision + 1))) >= (1 << 15):
            break
        precision += 1

    scaled = weights * float(1 << precision)
    rounded = np.where(scaled < 0.0, np.trunc(scaled - 0.5), np.trunc(scaled + 0.5))
    int16 = rounded.astype(np.int64).astype(np.int16)  # C's int -> int16_t conversion wraps the same way
    for array in (xmin, xsize, int16):
        array.flags.writeable = False
    return WeightTable(xmin=xmin, xsize=xsize, weights=int16, precision=precision)


@dataclass(frozen=True)
class _Pass:
    """One axis as banded blocks: ``out[o0:o1] = matrix @ in[i0:i1]`` (rows of pixels, channels kept).

    Inputs enter centred (pixel - 128) and ``bias`` (one per output value) adds back
    ``128 * sum(weights)`` and the rounding half, all in units of ``2 ** precision``.
    """

    blocks: tuple[tuple[int, int, int, int, np.ndarray], ...]  # (o0, o1, i0, i1, matrix)
    bias: np.ndarray  # [out_size] vertical, [out_size * channels] horizontal
    dtype: type


@functools.lru_cache(maxsize=64)
def _banded_pass(in_size: int, out_size: int, channels: int, horizontal: bool) -> _Pass:
    """Dense weight matrices for blocks of outputs, scaled by ``2 ** -precision``.

    Vertical blocks are ``[outputs, inputs]`` matrices applied from the left to whole rows.
    Horizontal blocks act on interleaved rows from the right: ``kron(block.T, eye(channels))``,
    ``[inputs * channels, outputs * channels]``.

    float32 is used when it is exact: centred pixels (|v| <= 128) keep every partial sum below
    2 ** 24 units when ``128 * sum(|weights|) < 2 ** 24``, and with ``precision <= 16`` any total
    too large to be exact lies at least 256 away from 0..255, where clamping hides the rounding.
    Otherwise float64 (partial sums stay far below 2 ** 53).
    """
    table = weight_table(in_size, out_size)
    weights = table.weights.astype(np.int64)
    unit = 2.0**-table.precision
    bias = (128 * weights.sum(axis=1) + (1 << (table.precision - 1))) * unit
    exact32 = table.precision <= 16 and 128 * int(np.abs(weights).sum(axis=1).max()) < _FLOAT32_EXACT
    exact32 = exact32 and np.array_equal(bias.astype(np.float32), bias)
    dtype = np.float32 if exact32 else np.float64
    # Blocks of `block` consecutive outputs, each reading one window of `span` consecutive inputs.
    block = _BLOCK
    count = -(-out_size // block)
    starts = np.arange(count) * block
    lo = np.minimum.reduceat(table.xmin, starts)
    hi = np.maximum.reduceat(table.xmin + table.xsize, starts)
    span = int((hi - lo).max())
    lo = np.minimum(lo, in_size - span)  # same width for all windows, kept inside the input
    matrices = np.zeros((count, block, span), dtype=np.float64)
    outputs, taps = np.nonzero(np.arange(weights.shape[1])[None, :] < table.xsize[:, None])
    which = outputs // block
    matrices[which, outputs % block, table.xmin[outputs] - lo[which] + taps] = weights[outputs, taps] * unit
    if horizontal:  # kron(matrix.T, eye(channels)) for every block at once
        spread = np.zeros((count, span, channels, block, channels), dtype=np.float64)
        for channel in range(channels):
            spread[:, :, channel, :, channel] = matrices.transpose(0, 2, 1)
        matrices = spread.reshape(count, span * channels, block * channels)
    matrices = np.ascontiguousarray(matrices, dtype=dtype)
    matrices.flags.writeable = False
    blocks = []
    for index, o0 in enumerate(starts.tolist()):
        o1 = min(out_size, o0 + block)
        matrix = matrices[index][:, : (o1 - o0) * channels] if horizontal else matrices[index][: o1 - o0]
        blocks.append((o0, o1, int(lo[index]), int(lo[index]) + span, matrix))
    bias = np.repeat(bias, channels) if horizontal else bias[:, None]
    bias = bias.astype(dtype)
    bias.flags.writeable = False
    return _Pass(blocks=tuple(blocks), bias=bias, dtype=dtype)


def _centred(pixels: np.ndarray, dtype: type) -> np.ndarray:
    """uint8 (or exact-integer float) values minus 128, as ``dtype``."""
    return np.subtract(pixels, 128, dtype=dtype) if pixels.dtype == np.uint8 else pixels.astype(dtype, copy=False)


def _horizontal(pixels: np.ndarray, width: int, centre_output: bool) -> np.ndarray:
    """[H, W, C] uint8 -> [H, width * C] floats: the horizontal pass, rounded and clamped.

    With ``centre_output`` the values are the uint8 results minus 128, already floored (input of
    the vertical pass); without, they are ``result + 1/2`` clamped to 0..255, to truncate to uint8.
    """
    rows, in_width, channels = pixels.shape
    plan = _banded_pass(in_width, width, channels, True)
    flat = pixels.reshape(rows, in_width * channels)
    out = np.empty((rows, width * channels), dtype=plan.dtype)
    step = max(1, _CHUNK_BYTES // (in_width * channels * np.dtype(plan.dtype).itemsize))
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        chunk = _centred(flat[r0:r1], plan.dtype)
        for o0, o1, i0, i1, matrix in plan.blocks:
            np.matmul(chunk[:, i0 * channels : i1 * channels], matrix, out=out[r0:r1, o0 * channels : o1 * channels])
    # (sum + 2 ** (p - 1)) >> p, clamped to 0..255, is floor(total + 1/2) with the bias added.
    if centre_output:
        out += plan.bias - 128
        np.floor(out, out=out)
        np.clip(out, -128.0, 127.0, out=out)
    else:
        out += plan.bias
        np.clip(out, 0.0, 255.0, out=out)  # truncation to uint8 then floors
    return out


def _vertical(rows: np.ndarray, in_height: int, height: int, channels: int) -> np.ndarray:
    """[in_height, N] (uint8, or centred exact-integer floats) -> [height, N] floats ``result + 1/2``,
    clamped to 0..255, to truncate to uint8."""
    plan = _banded_pass(in_height, height, channels, False)
    out = np.empty((height, rows.shape[1]), dtype=plan.dtype)
    for o0, o1, i0, i1, matrix in plan.blocks:
        np.matmul(matrix, _centred(rows[i0:i1], plan.dtype), out=out[o0:o1])
    out += plan.bias
    np.clip(out, 0.0, 255.0, out=out)
    return out


def resize_bicubic(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize uint8 pixels to ``height x width``, exactly as PyTorch's antialiased bicubic does on CPU.

    Args:
        pixels: uint8 array [H, W, C] with C in 1..4 (or [H, W], treated as one channel).
        height: output height in pixels (>= 1).
        width: output width in pixels (>= 1).

    Returns:
        A new C-contiguous uint8 array [height, width, C] (or [height, width] for a 2-D input) equal
        to ``torchvision.transforms.v2.functional.resize(chw, [height, width], BICUBIC, antialias=True)``
        of the same pixels as a uint8 CHW tensor, for upscaling, downscaling or an unchanged size on
        each axis independently.
    """
    if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8:
        raise TypeError(f"expected a uint8 numpy array, got {getattr(pixels, 'dtype', type(pixels))}")
    squeeze = pixels.ndim == 2
    if squeeze:
        pixels = pixels[:, :, None]
    if pixels.ndim != 3 or not 1 <= pixels.shape[2] <= 4:
        raise ValueError(f"expected [H, W, C] pixels with C in 1..4, got shape {pixels.shape}")
    in_height, in_width, channels = pixels.shape
    if in_height < 1 or in_width < 1:
        raise ValueError(f"image has no pixels: shape {pixels.shape}")
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise ValueError(f"output size must be at least 1 x 1, got {height} x {width}")

    pixels = np.ascontiguousarray(pixels)
    if (height, width) == (in_height, in_width):
        result = pixels.copy()
    else:
        rows = pixels.reshape(in_height, in_width * channels)
        if width != in_width:
            rows = _horizontal(pixels, width, centre_output=height != in_height)
        if height != in_height:
            rows = _vertical(rows, in_height, height, channels)
        result = rows.astype(np.uint8).reshape(height, width, channels)
    return result[:, :, 0] if squeeze else result
