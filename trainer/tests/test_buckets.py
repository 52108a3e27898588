import math

import pytest

from loraforge_trainer.buckets import make_buckets, pick_bucket, plan_batches, resize_crop_box


@pytest.mark.parametrize("res", [64, 128, 512, 768, 1024])
def test_buckets_are_multiples_of_64_and_about_res_squared(res):
    buckets = make_buckets(res)
    assert (res, res) in buckets
    for w, h in buckets:
        assert w % 64 == 0 and h % 64 == 0
        assert w * h <= res * res
        assert max(w, h) <= 2 * res and min(w, h) >= max(64, res // 2)
    # symmetric: every landscape bucket has its portrait twin
    assert {(h, w) for w, h in buckets} == set(buckets)


def test_sdxl_1024_buckets_are_the_usual_ones():
    b = make_buckets(1024)
    for wh in [(1024, 1024), (1152, 896), (896, 1152), (1216, 832), (1344, 768), (1536, 640)]:
        assert wh in b, wh
    for w, h in b:  # no bucket loses more than ~15% of the area
        assert w * h >= 0.85 * 1024 * 1024, (w, h)


@pytest.mark.parametrize(
    "size,expect",
    [
        ((1024, 1024), (1024, 1024)),
        ((4000, 4000), (1024, 1024)),
        ((1024, 768), (1152, 896)),  # 4:3 landscape
        ((768, 1024), (896, 1152)),  # 3:4 portrait
        ((1920, 1080), (1344, 768)),  # 16:9
        ((1080, 1920), (768, 1344)),
        ((5000, 1000), (2048, 512)),  # extreme: the widest bucket
        ((1000, 5000), (512, 2048)),
    ],
)
def test_pick_bucket_nearest_aspect(size, expect):
    assert pick_bucket(*size, make_buckets(1024)) == expect


def test_pick_bucket_is_nearest_in_log_aspect():
    buckets = make_buckets(1024)
    for w, h in [(640, 480), (333, 777), (1200, 1100), (3000, 1000)]:
        got = pick_bucket(w, h, buckets)
        best = min(abs(math.log(bw / bh) - math.log(w / h)) for bw, bh in buckets)
        assert abs(math.log(got[0] / got[1]) - math.log(w / h)) == pytest.approx(best)


def test_small_resolution_has_only_the_square():
    assert make_buckets(64) == [(64, 64)]
    assert pick_bucket(96, 64, make_buckets(64)) == (64, 64)


def test_resize_crop_covers_bucket_and_centers():
    (rw, rh), (left, top) = resize_crop_box(1920, 1080, (1344, 768))
    assert rw >= 1344 and rh >= 768
    assert left == (rw - 1344) // 2 and top == (rh - 768) // 2
    (rw, rh), (left, top) = resize_crop_box(100, 100, (64, 64))
    assert (rw, rh, left, top) == (64, 64, 0, 0)


def test_plan_batches_never_mixes_buckets():
    buckets = [(64, 64), (128, 64), (64, 64), (128, 64), (64, 64)]
    batches = plan_batches(buckets, 2, [4, 3, 2, 1, 0])
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3, 4]
    for b in batches:
        assert len({buckets[i] for i in b}) == 1
        assert 1 <= len(b) <= 2
    assert batches[0][0] == 4  # order follows the shuffled order
