"""cuts3d.features.weights.load_checkpoint on files that are not (whole) checkpoints: every one is a one-line
CheckpointError naming the file and the fix, never a KeyError, EOFError or a many-line torch message."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from cuts3d.features.weights import CheckpointError, load_checkpoint

EXPECTED = {"pos_embed": torch.Size([1, 5, 8])}
OFFICIAL = "dino_deitsmall16_pretrain.pth"


def _good() -> bytes:
    buffer = io.BytesIO()
    torch.save({"pos_embed": torch.zeros(1, 5, 8)}, buffer)
    return buffer.getvalue()


def _load(path: Path) -> dict:
    return load_checkpoint(path, EXPECTED, "dino_vits16", OFFICIAL)


def test_a_good_file_loads(tmp_path: Path) -> None:
    path = tmp_path / "good.pth"
    path.write_bytes(_good())
    assert _load(path)["pos_embed"].shape == (1, 5, 8)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"hello, this is a text file\n", "it is not a torch checkpoint (KeyError: 101)"),
        (b"", "is empty (0 bytes"),
        (json.dumps({"pos_embed": [1, 2]}).encode(), "it is not a torch file"),
        (np.random.default_rng(0).integers(0, 256, 400, dtype=np.uint8).tobytes(), "cannot read checkpoint"),
        (_good()[:10], "truncated"),
        (_good()[: len(_good()) // 2], "truncated"),
        (_good()[:-1], "truncated"),
    ],
    ids=["text", "empty", "json", "random", "truncated-head", "truncated-half", "truncated-last-byte"],
)
def test_odd_files_are_one_line_checkpoint_errors(tmp_path: Path, content: bytes, says: str) -> None:
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        _load(path)
    message = str(info.value)
    assert says in message and str(path) in message and "pass it with --weights" in message
    assert "\n" not in message


def test_a_foreign_zip_and_a_folder(tmp_path: Path) -> None:
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("archive/data.pkl", b"garbage")
    with pytest.raises(CheckpointError, match="model.zip .*not a torch checkpoint"):
        _load(archive)
    with pytest.raises(CheckpointError, match=f"{tmp_path} is a folder; pass the file {OFFICIAL} with --weights"):
        _load(tmp_path)
