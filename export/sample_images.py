"""Deterministic images of the kinds the service embeds, drawn with PIL alone.

Used for export validation, INT8 calibration and the tests: Keepa-style price-history charts
(step lines, text and a date axis on white), product-style photos (an object with shading on a
light or textured background), and the awkward cases: grayscale, RGBA with transparency,
palette images and extreme aspect ratios.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

# Keepa's series colours: Amazon's own offer (orange, a filled area), third-party new (blue), used
# (dark grey), and the sales rank (green, on its own axis at the right).
KEEPA_AMAZON = (255, 153, 0)
KEEPA_AMAZON_FILL = (255, 236, 204)
KEEPA_NEW = (24, 119, 242)
KEEPA_USED = (68, 68, 68)
KEEPA_SALES_RANK = (63, 163, 63)
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True)
class SampleImage:
    name: str
    kind: str  # "keepa_chart", "product_image" or an edge case name
    image: Image.Image


def _price_walk(rng: random.Random, steps: int, lo: float, hi: float, start: float) -> list[float]:
    """A price that holds for a while, then jumps (a deal, a restock), always within [lo, hi]."""
    prices, price = [], start
    for _ in range(steps):
        if rng.random() < 0.25:
            price = min(max(price * rng.uniform(0.8, 1.2), lo), hi)
        prices.append(price)
    return prices


def keepa_chart(seed: int, width: int = 800, height: int = 500) -> Image.Image:
    """A Keepa-style price-history chart: step lines for the Amazon, new and used prices over a months-long
    date axis (ticks in order), a price axis that falls from top to bottom, the sales rank on its own axis,
    a legend; every line stays inside the plot frame."""
    rng = random.Random(seed)
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=max(10, height // 40))
    left, right, top, bottom = 60, width - 70, 30, height - 50
    # Price axis: six gridlines from the top price down to the lowest, evenly spaced, labels in order.
    low = rng.choice((5, 10, 20, 50, 100))
    step = rng.choice((5, 10, 20, 50)) * (low // 5 if low >= 50 else 1)
    prices_at = [low + step * (5 - i) for i in range(6)]  # top to bottom
    for i, price in enumerate(prices_at):
        y = top + i * (bottom - top) // 5
        draw.line([(left, y), (right, y)], fill=(230, 230, 230))
        draw.text((5, y - 6), f"$ {price}", fill=(90, 90, 90), font=font)
    # Date axis: seven ticks, one or two months apart, from a start month, in calendar order.
    month, year, every = rng.randrange(12), rng.choice((2024, 2025)), rng.choice((1, 2))
    for i in range(7):
        x = left + i * (right - left) // 6
        m = month + i * every
        draw.line([(x, top), (x, bottom)], fill=(240, 240, 240))
        draw.text((x - 14, bottom + 8), f"{MONTHS[m % 12]} {year + m // 12}", fill=(90, 90, 90), font=font)
    # Sales rank on the right axis (smaller is better, drawn higher).
    best, worst = rng.choice((500, 2_000, 10_000)), rng.choice((50_000, 200_000))
    for i in range(6):
        rank = best + (worst - best) * i // 5
        draw.text((right + 6, top + i * (bottom - top) // 5 - 6), f"#{rank:,}", fill=KEEPA_SALES_RANK, font=font)

    def y_of(price: float, pad: int) -> float:
        y = bottom - (price - prices_at[-1]) / (prices_at[0] - prices_at[-1]) * (bottom - top)
        return min(max(y, top + pad), bottom - pad)

    steps = max(8, (right - left) // 12)
    xs = [left + (right - left) * k / steps for k in range(steps + 1)]

    def steps_of(values: list[float], y: Callable[[float], float]) -> list[tuple[float, float]]:
        return [point for k, v in enumerate(values) for point in ((xs[k], y(v)), (xs[k + 1], y(v)))]

    hi, lo = prices_at[0] - step * 0.2, prices_at[-1] + step * 0.2
    new_start = rng.uniform(lo + (hi - lo) * 0.2, hi - (hi - lo) * 0.2)
    lines = {  # drawn in this order: the fill under Amazon's price first, its line last
        KEEPA_SALES_RANK: steps_of(
            _price_walk(rng, steps, best, worst, rng.uniform(best, worst)),
            lambda r: min(max(top + (r - best) / (worst - best) * (bottom - top), top + 1), bottom - 1),
        ),
        KEEPA_USED: steps_of(_price_walk(rng, steps, lo, hi, new_start * rng.uniform(0.6, 0.9)), lambda v: y_of(v, 2)),
        KEEPA_NEW: steps_of(_price_walk(rng, steps, lo, hi, new_start), lambda v: y_of(v, 2)),
        KEEPA_AMAZON: steps_of(
            _price_walk(rng, steps, lo, hi, new_start * rng.uniform(0.9, 1.05)), lambda v: y_of(v, 3)
        ),
    }
    draw.polygon([*lines[KEEPA_AMAZON], (right, bottom), (left, bottom)], fill=KEEPA_AMAZON_FILL)
    for colour, points in lines.items():
        draw.line(points, fill=colour, width={KEEPA_SALES_RANK: 1, KEEPA_AMAZON: 3}.get(colour, 2))
    draw.rectangle([left, top, right, bottom], outline=(150, 150, 150))
    draw.text((left, 8), f"Keepa price history ASIN B0{rng.randint(10**7, 10**8 - 1)}", fill=(0, 0, 0), font=font)
    x, legend_y = left, bottom + 30  # the legend under the date axis, as Keepa draws it
    for colour, label in (
        (KEEPA_AMAZON, "Amazon"),
        (KEEPA_NEW, "New"),
        (KEEPA_USED, "Used"),
        (KEEPA_SALES_RANK, "Sales Rank"),
    ):
        draw.rectangle([x, legend_y + 2, x + 8, legend_y + 10], fill=colour)
        draw.text((x + 11, legend_y), label, fill=(60, 60, 60), font=font)
        x += int(draw.textlength(label, font=font)) + 30
    return img


def product_image(seed: int, width: int = 600, height: int = 600) -> Image.Image:
    """A photo-like product shot: a shaded object on a light, slightly noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(200, 250)
    bg = base - 25 * (yy / height) + rng.normal(0, 3, (height, width))
    arr = np.repeat(bg[..., None], 3, axis=2)
    colour = rng.uniform(20, 230, 3)
    cx, cy = width * rng.uniform(0.35, 0.65), height * rng.uniform(0.35, 0.65)
    rx, ry = width * rng.uniform(0.15, 0.35), height * rng.uniform(0.15, 0.35)
    d = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
    shade = np.clip(1.2 - 0.5 * ((xx - cx + rx / 2) / rx) ** 2, 0.4, 1.2)
    inside = d <= 1.0
    arr[inside] = (colour[None, :] * shade[inside][:, None]).clip(0, 255)
    img = Image.fromarray(arr.clip(0, 255).astype(np.uint8), "RGB").filter(ImageFilter.GaussianBlur(1.2))
    draw = ImageDraw.Draw(img)
    draw.text((10, height - 24), f"SKU {seed:05d}", fill=(40, 40, 40), font=ImageFont.load_default(size=16))
    return img


# What users send (width, height): Keepa's default graph and its large form, a wider chart; product
# photos square, above the pixel cap, portrait, and a tall banner.
CHART_SIZES = ((500, 200), (1000, 400), (800, 500), (1280, 720))
PHOTO_SIZES = ((600, 600), (1500, 1500), (1000, 1200), (300, 900))


def edge_cases(seed: int) -> list[SampleImage]:
    """Modes and shapes that preprocessing must handle: below the pixel minimum, odd sizes that
    exercise the processor's rounding, extreme aspect ratios, grayscale, alpha and palettes."""
    chart = keepa_chart(seed)
    photo = product_image(seed)
    rgba = photo.convert("RGBA")
    alpha = Image.new("L", rgba.size, 0)
    ImageDraw.Draw(alpha).ellipse([50, 50, rgba.width - 50, rgba.height - 50], fill=255)
    rgba.putalpha(alpha)
    return [
        SampleImage(f"grayscale_{seed}", "grayscale", chart.convert("L")),
        SampleImage(f"rgba_{seed}", "rgba", rgba),
        SampleImage(f"palette_{seed}", "palette", photo.convert("P")),
        SampleImage(f"wide_{seed}", "extreme_aspect", keepa_chart(seed + 1, width=1600, height=120)),
        SampleImage(f"tall_{seed}", "extreme_aspect", product_image(seed + 2, width=90, height=900)),
        SampleImage(f"thumbnail_{seed}", "thumbnail", product_image(seed + 3, width=40, height=40)),
        SampleImage(f"odd_{seed}", "odd_size", keepa_chart(seed + 4, width=517, height=333)),
    ]


def validation_set(count: int = 4, seed: int = 0, with_edge_cases: bool = True) -> list[SampleImage]:
    """`count` charts and `count` photos at the sizes users send, then the edge cases: what every
    artifact is checked on."""
    out: list[SampleImage] = []
    for i in range(count):
        cw, ch = CHART_SIZES[i % len(CHART_SIZES)]
        pw, ph = PHOTO_SIZES[i % len(PHOTO_SIZES)]
        out.append(SampleImage(f"keepa_chart_{seed + i}_{cw}x{ch}", "keepa_chart", keepa_chart(seed + i, cw, ch)))
        out.append(SampleImage(f"product_{seed + i}_{pw}x{ph}", "product_image", product_image(seed + i, pw, ph)))
    if with_edge_cases:
        out.extend(edge_cases(seed))
    return out


def calibration_images(count: int, seed: int = 1000) -> Iterator[Image.Image]:
    """Charts and product images for INT8 calibration at the sizes users send, disjoint from the
    validation seeds."""
    for i in range(count):
        if i % 2 == 0:
            yield keepa_chart(seed + i, *CHART_SIZES[(i // 2) % len(CHART_SIZES)])
        else:
            yield product_image(seed + i, *PHOTO_SIZES[(i // 2) % len(PHOTO_SIZES)])


QUERIES = (
    "keepa price history chart",
    "amazon price drop in november",
    "red running shoe",
    "used price higher than new price",
    "sales rank spike",
    "stainless steel kettle",
    "wireless bluetooth headphones black",
    "lowest price of the year",
)
