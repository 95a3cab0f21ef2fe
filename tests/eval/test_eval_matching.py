"""Matching pseudo-mask images to ground-truth images by relative path (cuts3d.eval.matching)."""

from __future__ import annotations

import pytest

from cuts3d.eval import EvalInputError
from cuts3d.eval.matching import ImageMatch, match_by_path, path_parts


def images(*names: str, start: int = 1) -> dict[int, dict[str, str]]:
    return {start + i: {"file_name": n} for i, n in enumerate(names)}


def match(pred_names: tuple[str, ...], gt_names: tuple[str, ...]) -> ImageMatch:
    """Prediction images get ids 1.., ground-truth images 100..; every prediction image is wanted."""
    pred = images(*pred_names)
    return match_by_path(pred, images(*gt_names, start=100), list(pred), "p.json", "gt.json")


def test_path_parts():
    assert path_parts("./a\\b//x.jpg") == ("a", "b", "x.jpg")
    assert path_parts("") == ()


def test_exact_path_first_then_longest_shared_tail():
    gt = ("x.jpg", "a/x.jpg", "b/x.jpg", "c/y.jpg")
    assert match(("a/x.jpg", "x.jpg", "v/b/x.jpg"), gt).ids == {1: 101, 2: 100, 3: 102}
    # a parent folder on the prediction side, base names on the ground-truth side
    assert match(("val2017/000139.jpg",), ("000139.jpg",)).ids == {1: 100}


def test_a_different_folder_with_the_same_base_name_does_not_match():
    m = match(("c/x.jpg", "a/x.jpg"), ("a/x.jpg", "b/x.jpg"))
    assert m.ids == {2: 100} and m.unmatched == [1]


def test_unnamed_and_unwanted_images():
    pred = {1: {"file_name": ""}, 2: {"file_name": "a/x.jpg"}, 3: {"file_name": "x.jpg"}}
    gt = images("a/x.jpg", "b/x.jpg", start=100)
    # image 3 would be ambiguous, but has no prediction, so it is not looked at
    m = match_by_path(pred, gt, [1, 2, 7], "p.json", "gt.json")
    assert m.ids == {2: 100} and m.unnamed == [1, 7] and m.unmatched == []


def test_ambiguous_names_are_one_line_errors():
    with pytest.raises(EvalInputError) as e:
        match(("x.jpg",), ("a/x.jpg", "b/x.jpg"))
    msg = str(e.value)
    assert msg.startswith("predictions p.json: image 'x.jpg' (image id 1) cannot be matched to one image")
    assert "'a/x.jpg', 'b/x.jpg'" in msg and "gt.json" in msg and "\n" not in msg
    with pytest.raises(EvalInputError, match="lists that file name for several image ids"):
        match(("x.jpg",), ("x.jpg", "./x.jpg"))
    with pytest.raises(EvalInputError, match=r"images 'q/x.jpg' and 'x.jpg' \(image ids 1, 2\) both match"):
        match(("q/x.jpg", "x.jpg"), ("x.jpg",))
