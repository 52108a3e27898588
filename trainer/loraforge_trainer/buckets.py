"""Aspect-ratio bucketing: every image trains at a size of about ``resolution²`` pixels whose
sides are multiples of 64 and whose aspect ratio is the nearest to the image's own, instead of
being squashed or cropped to a square.

Pure functions, no torch: unit-tested on their own.
"""

from __future__ import annotations

import math

STEP = 64


def make_buckets(resolution: int, step: int = STEP) -> list[tuple[int, int]]:
    """All ``(width, height)`` buckets for ``resolution``: sides multiples of ``step`` between
    ``resolution/2`` and ``2*resolution`` (never below ``step``), area at most ``resolution²`` and
    as large as it can be for that width. Sorted by aspect ratio (width/height)."""
    if resolution % step:
        raise ValueError(f"resolution {resolution} is not a multiple of {step}")
    area = resolution * resolution
    lo = max(step, (resolution // 2) // step * step)
    hi = 2 * resolution
    out: set[tuple[int, int]] = set()
    for w in range(lo, hi + 1, step):
        h = (area // w) // step * step
        if lo <= h <= hi:
            out.add((w, h))
            out.add((h, w))
    return sorted(out, key=lambda wh: (wh[0] / wh[1], wh[0] * wh[1]))


def pick_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    """The bucket whose aspect ratio is the closest to ``width/height`` in log space (so 2:1 and
    1:2 are equally far from 1:1); on a tie, the larger area."""
    if width <= 0 or height <= 0:
        raise ValueError(f"bad image size {width}x{height}")
    target = math.log(width / height)
    return min(buckets, key=lambda wh: (abs(math.log(wh[0] / wh[1]) - target), -wh[0] * wh[1]))


def resize_crop_box(width: int, height: int, bucket: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """How to fit an image into ``bucket``: scale it (keeping its aspect) to cover the bucket, then
    center-crop. Returns ``((resized_w, resized_h), (crop_left, crop_top))``."""
    bw, bh = bucket
    scale = max(bw / width, bh / height)
    rw = max(bw, round(width * scale))
    rh = max(bh, round(height * scale))
    return (rw, rh), ((rw - bw) // 2, (rh - bh) // 2)


def plan_batches(buckets_of: list[tuple[int, int]], batch_size: int, order: list[int]) -> list[list[int]]:
    """Groups item indices (taken in ``order``) into batches that never mix buckets. Every item
    appears exactly once; a bucket's last batch may be short. Batches come out in the order of
    their first item, so a shuffled ``order`` gives a shuffled batch order."""
    open_batches: dict[tuple[int, int], list[int]] = {}
    batches: list[list[int]] = []
    for i in order:
        b = buckets_of[i]
        cur = open_batches.get(b)
        if cur is None:
            cur = []
            open_batches[b] = cur
            batches.append(cur)
        cur.append(i)
        if len(cur) == batch_size:
            del open_batches[b]
    return batches
