"""The numpy bicubic resize equals torchvision's uint8 antialiased bicubic resize, bit for bit.

The reference is what the Qwen2-VL processor runs: ``torchvision.transforms.v2.functional.resize``
with BICUBIC and antialias=True on a uint8 CHW tensor, i.e. PyTorch's native uint8 kernel (the AVX2
Pillow-SIMD port on x86 machines with AVX2, the generic separable kernel otherwise).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image, ImageDraw

from model_repository.colqwen2_serving.resampling import _banded_pass, resize_bicubic, weight_table

torch = pytest.importorskip("torch")
tv_functional = pytest.importorskip("torchvision.transforms.v2.functional")
from torchvision.transforms import InterpolationMode  # noqa: E402


def torch_resize(pixels: np.ndarray, height: int, width: int, channels_last: bool = False) -> np.ndarray:
    """[H, W, C] uint8 -> torchvision's resize of the CHW tensor, back as [height, width, C]."""
    chw = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)
    if not channels_last:
        chw = chw.contiguous()
    out = tv_functional.resize(chw, [height, width], interpolation=InterpolationMode.BICUBIC, antialias=True)
    return out.permute(1, 2, 0).numpy()


def noise(height: int, width: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def sharp(height: int, width: int, channels: int = 3) -> np.ndarray:
    """Black-on-white lines, text, boxes and a fine checkerboard: overshoot that clamping must cut."""
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    for k in range(0, max(height, width), 9):
        draw.line([(k, 0), (0, k)], fill=(0, 0, 0), width=1)
        draw.line([(width - 1 - k, 0), (width - 1, k)], fill=(200, 0, 30), width=2)
    for k in range(0, height, 23):
        draw.text((3, k), "Qwen2-VL 0123 Wg|", fill=(0, 0, 255))
        draw.rectangle([width // 2, k, width // 2 + 5, k + 3], fill=(0, 160, 0))
    pixels = np.array(image)
    yy, xx = np.mgrid[:height, :width]
    checker = ((yy // 2 + xx // 2) % 2 == 0) & (yy > height * 3 // 4)
    pixels[checker] = 0
    if channels == 4:
        return np.concatenate([pixels, 255 - pixels[:, :, :1]], axis=2)
    return np.ascontiguousarray(pixels[:, :, :channels])


def assert_same_as_torch(pixels: np.ndarray, height: int, width: int) -> None:
    ours = resize_bicubic(pixels, height, width)
    theirs = torch_resize(pixels, height, width)
    assert ours.dtype == np.uint8 and ours.shape == (height, width, pixels.shape[2])
    if not np.array_equal(ours, theirs):
        diff = np.abs(ours.astype(int) - theirs.astype(int))
        pytest.fail(f"{pixels.shape} -> {height}x{width}: {int((diff > 0).sum())} values differ, max {int(diff.max())}")


# (input H, W) -> (output H, W): the processor's typical targets (multiples of 28), both directions.
SHAPES = [
    ((500, 200), (504, 196)),
    ((200, 500), (196, 504)),
    ((1000, 400), (1008, 392)),
    ((1500, 1500), (756, 756)),
    ((300, 900), (308, 896)),
    ((900, 300), (896, 308)),
    ((40, 40), (56, 56)),
    ((1, 1), (56, 56)),
    ((1, 7), (56, 84)),
    ((1600, 120), (1596, 112)),
    ((120, 1600), (112, 1596)),
    ((3000, 10), (1484, 28)),
    ((10, 3000), (28, 1484)),
    ((3000, 10), (28, 1)),
    ((37, 53), (29, 101)),
    ((61, 17), (13, 17)),  # width unchanged: vertical pass only
    ((64, 33), (64, 129)),  # height unchanged: horizontal pass only
    ((100, 400), (200, 100)),  # one axis up, the other down
    ((56, 84), (56, 84)),  # identity
    ((1000, 1000), (100, 90)),  # 10x down: float64 sums
    ((1000, 999), (251, 250)),  # just under 4x down: the last float32 case
]


@pytest.mark.parametrize(("src", "dst"), SHAPES, ids=[f"{s[0]}x{s[1]}-{d[0]}x{d[1]}" for s, d in SHAPES])
@pytest.mark.parametrize("kind", ["noise", "sharp"])
def test_matches_torchvision_bit_for_bit(src, dst, kind):
    pixels = noise(*src) if kind == "noise" else sharp(*src)
    assert_same_as_torch(pixels, *dst)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_every_channel_count(channels):
    assert_same_as_torch(sharp(123, 211, channels), 56, 308)
    assert_same_as_torch(noise(45, 38, channels, seed=channels), 112, 28)


def test_random_sizes():
    rng = np.random.default_rng(2024)
    for index in range(60):
        in_h, in_w, out_h, out_w = (int(v) for v in rng.integers(1, 160, 4))
        pixels = noise(in_h, in_w, 3, seed=index) if index % 2 else sharp(in_h, in_w)
        assert_same_as_torch(pixels, out_h, out_w)


def test_channels_last_tensor_gives_the_same_result():
    pixels = sharp(250, 333)
    assert np.array_equal(torch_resize(pixels, 140, 168, channels_last=True), resize_bicubic(pixels, 140, 168))


def test_two_dimensional_input_is_one_channel():
    pixels = noise(90, 70, 1)
    out = resize_bicubic(pixels[:, :, 0], 28, 56)
    assert out.shape == (28, 56)
    assert np.array_equal(out, torch_resize(pixels, 28, 56)[:, :, 0])


def test_input_untouched_and_output_fresh():
    pixels = sharp(80, 60)[::-1, ::2]  # a non-contiguous view
    before = pixels.copy()
    out = resize_bicubic(pixels, 56, 28)
    assert np.array_equal(pixels, before)
    assert out.flags.c_contiguous and out.flags.writeable
    assert np.array_equal(out, torch_resize(before, 56, 28))
    same = resize_bicubic(pixels, 80, 30)
    assert not np.shares_memory(same, pixels) and np.array_equal(same, before)


def test_weight_tables_are_fixed_point_partitions_of_unity():
    for in_size, out_size in [(1500, 756), (200, 196), (10, 3000), (3000, 10), (1, 56)]:
        table = weight_table(in_size, out_size)
        assert 13 <= table.precision <= 22
        sums = table.weights.astype(np.int64).sum(axis=1)
        assert np.all(np.abs(sums - (1 << table.precision)) <= table.weights.shape[1])
        assert np.all(table.xmin >= 0) and np.all(table.xmin + table.xsize <= in_size)


def test_float32_only_where_exact():
    assert _banded_pass(1500, 756, 3, True).dtype == np.float32  # 2x down
    assert _banded_pass(10, 3000, 3, True).dtype == np.float32  # any upscale
    assert _banded_pass(1000, 100, 3, True).dtype == np.float64  # 10x down


@pytest.mark.parametrize(
    ("pixels", "size", "error"),
    [
        (np.zeros((4, 4, 3), dtype=np.float32), (2, 2), TypeError),
        (np.zeros((4, 4, 5), dtype=np.uint8), (2, 2), ValueError),
        (np.zeros((4, 4, 3, 1), dtype=np.uint8), (2, 2), ValueError),
        (np.zeros((0, 4, 3), dtype=np.uint8), (2, 2), ValueError),
        (np.zeros((4, 4, 3), dtype=np.uint8), (0, 2), ValueError),
    ],
)
def test_bad_input_is_refused(pixels, size, error):
    with pytest.raises(error):
        resize_bicubic(pixels, *size)


@pytest.mark.slow  # a second torch import in a subprocess: seconds, and it checks torch rather than this code
def test_generic_kernels_agree(tmp_path):
    """PyTorch's non-AVX kernel (``ATEN_CPU_CAPABILITY=default``; also what AVX-512 builds run) agrees.

    Not for width-1 outputs with a height change: the generic vertical loop then repeats output
    row 0 down the column (a PyTorch bug the AVX2 kernel, and this module, do not have).
    """
    cases = [((500, 200), (504, 196)), ((1000, 400), (1008, 392)), ((40, 40), (56, 56)), ((3000, 10), (28, 2))]
    for index, (src, _) in enumerate(cases):
        np.save(tmp_path / f"in{index}.npy", sharp(*src) if index % 2 else noise(*src, seed=index))
    script = textwrap.dedent(
        f"""
        import numpy as np, torch
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as F
        assert torch.backends.cpu.get_cpu_capability() == "DEFAULT"
        for index, (_, (h, w)) in enumerate({cases!r}):
            chw = torch.from_numpy(np.load(f"{tmp_path}/in{{index}}.npy")).permute(2, 0, 1).contiguous()
            out = F.resize(chw, [h, w], interpolation=InterpolationMode.BICUBIC, antialias=True)
            np.save(f"{tmp_path}/out{{index}}.npy", out.permute(1, 2, 0).numpy())
        """
    )
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "default"}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=300)
    for index, (_, dst) in enumerate(cases):
        generic = np.load(tmp_path / f"out{index}.npy")
        assert np.array_equal(resize_bicubic(np.load(tmp_path / f"in{index}.npy"), *dst), generic)
