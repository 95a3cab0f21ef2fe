"""Mask checks (cuts3d.eval.masks): the vectorised compressed-RLE decode agrees with pycocotools on every
valid string and rejects every string pycocotools cannot decode; to_rle accepts each COCO mask form and
names what is wrong with a malformed one."""

from __future__ import annotations

import random

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from cuts3d.eval import masks
from cuts3d.eval.masks import MaskError, MaskSizeError, rle_problems, to_rle


def encode_runs(runs: list[int]) -> str:
    """Compressed COCO string of arbitrary run lengths (negative ones too), written from the format's
    description: values from index 3 on are differences to the run two back, 5-bit groups low first,
    0x20 = more groups follow, 0x10 of the last group = sign."""
    out = []
    for i, r in enumerate(runs):
        x = r - runs[i - 2] if i > 2 else r
        while True:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr(48 + (c | (0x20 if more else 0))))
            if not more:
                break
    return "".join(out)


def random_mask(rng: np.random.Generator) -> np.ndarray:
    h, w = (int(v) for v in rng.integers(1, 50, 2))
    return (rng.random((h, w)) < rng.random()).astype(np.uint8)


def test_encoder_matches_pycocotools():
    rng = np.random.default_rng(1)
    for _ in range(50):
        m = random_mask(rng)
        flat = m.flatten(order="F")
        change = np.flatnonzero(np.diff(flat)) + 1
        runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
        if flat[0]:
            runs = [0] + runs
        assert encode_runs(runs) == mask_utils.encode(np.asfortranarray(m))["counts"].decode()


def test_every_pycocotools_string_is_valid():
    rng = np.random.default_rng(0)
    ms = [random_mask(rng) for _ in range(300)]
    ms += [np.zeros((7, 5), np.uint8), np.ones((7, 5), np.uint8), np.ones((1, 1), np.uint8)]
    counts = [mask_utils.encode(np.asfortranarray(m))["counts"].decode() for m in ms]
    assert rle_problems(counts, [m.size for m in ms]) == [None] * len(ms)


def test_runs_are_checked_for_sign_and_total():
    ok = encode_runs([3, 4, 5, 100 - 12])
    negative = encode_runs([3, 4, 93, -10, 10])  # sums to 100, one run negative
    short = encode_runs([3, 4, 5, 50])
    assert mask_utils.area({"size": [10, 10], "counts": negative}) > 10**9  # what pycocotools would score
    assert rle_problems([ok, negative, short], [100, 100, 100]) == [
        None,
        "its RLE counts decode to a negative run length",
        "its RLE counts decode to runs covering 62 pixels but the image has 100 (height x width)",
    ]


def test_random_run_lists_agree_with_a_direct_check():
    rng = random.Random(0)
    counts, sizes, want = [], [], []
    for _ in range(400):
        n = rng.randint(1, 12)
        runs = [rng.choice([rng.randint(0, 40), rng.randint(-5, 5), rng.randint(0, 2**20)]) for _ in range(n)]
        total = sum(runs) if rng.random() < 0.6 else sum(runs) + rng.randint(1, 9)
        counts.append(encode_runs(runs))
        sizes.append(total)
        want.append(all(r >= 0 for r in runs) and sum(runs) == total)
    got = rle_problems(counts, sizes)
    assert [g is None for g in got] == want


def test_no_false_accepts_against_pycocotools_decode():
    # mutate valid strings one character at a time: whatever pycocotools refuses to decode is refused here
    rng = np.random.default_rng(2)
    pick = random.Random(2)
    for _ in range(150):
        m = random_mask(rng)
        s = mask_utils.encode(np.asfortranarray(m))["counts"].decode()
        j = pick.randrange(len(s))
        t = s[:j] + chr(pick.randrange(48, 112)) + s[j + 1 :]
        (problem,) = rle_problems([t], [m.size])
        try:
            decoded = mask_utils.decode({"size": list(m.shape), "counts": t})
        except ValueError:
            assert problem is not None, t
            continue
        if problem is None:
            assert decoded.shape == m.shape and mask_utils.area({"size": list(m.shape), "counts": t}) <= m.size


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("!!!garbage###", "characters outside '0'..'o'"),
        ("", "string is empty"),
        ("52é", "characters outside"),
        ("52P", "ends inside a run length"),
        ("PPPPPPPP0", "run length too long to be real"),
    ],
)
def test_malformed_strings(text, reason):
    (problem,) = rle_problems([text], [100])
    assert problem is not None and reason in problem


def test_chunks_and_duplicates_give_the_same_answers(monkeypatch):
    rng = np.random.default_rng(3)
    ms = [random_mask(rng) for _ in range(40)]
    counts = [mask_utils.encode(np.asfortranarray(m))["counts"].decode() for m in ms]
    counts[7] = counts[7][:-1] + "P"
    sizes = [m.size for m in ms]
    whole = rle_problems(counts * 2 + [counts[0]], sizes * 2 + [sizes[0] + 1])
    monkeypatch.setattr(masks, "_CHUNK_CHARS", 50)
    assert rle_problems(counts * 2 + [counts[0]], sizes * 2 + [sizes[0] + 1]) == whole
    assert whole[7] is not None and whole[47] == whole[7] and whole[0] is None and whole[-1] is not None


def test_to_rle_forms():
    h, w = 6, 8
    m = np.zeros((h, w), bool)
    m[1:4, 2:6] = True
    want = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))["counts"].decode()
    assert to_rle(m, h, w) == {"size": [h, w], "counts": want}
    assert to_rle({"size": [h, w], "counts": want.encode()}, h, w)["counts"] == want
    flat = m.flatten(order="F").astype(int)
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    assert to_rle({"size": [h, w], "counts": runs}, h, w)["counts"] == want
    poly = to_rle([2, 1, 6, 1, 6, 4, 2, 4], h, w)  # one flat polygon
    assert mask_utils.area(poly) > 0


def test_to_rle_errors():
    with pytest.raises(MaskSizeError) as e:
        to_rle(np.ones((3, 4), np.uint8), 4, 3)
    assert e.value.size == [3, 4]
    with pytest.raises(MaskError, match="0/1 or bool"):
        to_rle(np.full((4, 3), 2), 4, 3)
    with pytest.raises(MaskError, match="non-negative integers"):
        to_rle({"size": [4, 3], "counts": [2.5, 9.5]}, 4, 3)
    with pytest.raises(MaskError, match=r"RLE 'size' must be"):
        to_rle({"size": [4, -3], "counts": "0"}, 4, 3)
    with pytest.raises(MaskError, match="NaN or infinite"):
        to_rle([[0, 0, float("inf"), 0, 2, 2]], 4, 3)
    with pytest.raises(MaskError, match="lies far outside"):
        to_rle([[0, 0, 500, 0, 2, 2]], 4, 3)
    with pytest.raises(MaskError, match=r"even number \(>= 6\)"):
        to_rle([[0, 0, 1, 1]], 4, 3)
    with pytest.raises(MaskError, match="binary mask written as nested lists"):
        to_rle([[0, 1, 1], [0, 1, 0], [0, 0, 0], [1, 1, 1]], 4, 3)
