"""Depth models (cuts3d.depth.models): tiny random Depth Anything / ZoeDepth build offline and return
(H, W) float32 depth at the input size; disparity is turned into depth with the order reversed; weights
that are missing or wrong give a WeightsUnavailableError that says how to get them."""

from __future__ import annotations

import json
import socket
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("transformers", reason="depth models need the optional 'transformers' package")

from cuts3d.depth import (
    DEPTH_MODELS,
    WeightsUnavailableError,
    build_depth_model,
    disparity_to_depth,
    tiny_config,
)

DA = "depth_anything_v2_small"
ZOE = "zoedepth"


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection or resolve a host fails the test (instead of hanging)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def tiny(name: str, **kwargs):
    return build_depth_model(name, weights="none", config_overrides=tiny_config(name), input_size=56, **kwargs)


@pytest.fixture(scope="module")
def da_model():
    torch.manual_seed(0)
    return tiny(DA)


@pytest.fixture(scope="module")
def zoe_model():
    torch.manual_seed(0)
    return tiny(ZOE)


def image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --- building offline ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [DA, ZOE])
def test_tiny_random_models_build_offline_and_return_input_size(name, no_network):
    torch.manual_seed(0)
    model = tiny(name)
    assert model.name == name and model.device == "cpu" and model.weights_id == "random"
    assert sum(p.numel() for p in model.model.parameters()) < 1_000_000  # tiny, not the real architecture
    depth = model(image(37, 53))
    assert depth.shape == (37, 53) and depth.dtype == np.float32 and np.isfinite(depth).all()


def test_depth_anything_output_is_converted_depth(da_model):
    depth = da_model(image(40, 64))
    # converted from disparity: relative depth in [1, 1/eps], nearest pixel at exactly 1
    assert depth.min() == pytest.approx(1.0) and depth.max() <= 1 / da_model.disparity_eps + 1e-4
    assert da_model.output == "disparity" and DEPTH_MODELS[DA].hub_id == "depth-anything/Depth-Anything-V2-Small-hf"


def test_zoedepth_output_is_metric_and_positive(zoe_model):
    depth = zoe_model(image(48, 40))
    assert depth.shape == (48, 40) and depth.dtype == np.float32
    assert (depth >= 1e-3).all() and np.isfinite(depth).all()
    assert zoe_model.output == "metric" and zoe_model.batch_size == 1  # its domain vote needs batch size 1


@pytest.mark.filterwarnings("error:The given NumPy array is not writable")
def test_predict_batches_mixed_sizes_in_order(da_model):
    imgs = [image(30, 40, 1), image(50, 20, 2), image(30, 40, 3)]
    imgs[1].flags.writeable = False  # e.g. np.asarray of a PIL image: must work, and without a torch warning
    out = da_model.predict(imgs)
    assert [d.shape for d in out] == [(30, 40), (50, 20), (30, 40)]
    for img, d in zip(imgs, out):
        np.testing.assert_allclose(d, da_model(img), rtol=1e-4, atol=1e-4)


def test_bad_inputs_and_arguments(da_model):
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        da_model(image(20, 20).astype(np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        da_model(image(20, 20)[..., 0])
    with pytest.raises(
        ValueError, match="unknown depth model 'midas'; choose one of: depth_anything_v2_small, zoedepth"
    ):
        build_depth_model("midas", weights="none")
    with pytest.raises(ValueError, match="CUDA is not available|invalid device"):
        if torch.cuda.is_available():
            pytest.skip("CUDA present: the unavailable-device message cannot be provoked")
        build_depth_model(DA, weights="none", config_overrides=tiny_config(DA), device="cuda")
    with pytest.raises(ValueError, match="invalid config_overrides"):
        build_depth_model(DA, weights="none", config_overrides={"depth_estimation_type": "sideways"})


# --- disparity -> depth ------------------------------------------------------------------------------------


def test_disparity_to_depth_reverses_order():
    rng = np.random.default_rng(0)
    disparity = rng.uniform(0.0, 7.0, (30, 40))
    depth = disparity_to_depth(disparity, eps=0.05)
    assert depth.dtype == np.float32 and depth.shape == (30, 40)
    # strictly reversed order: closer (larger disparity) <=> smaller depth
    order = np.argsort(disparity, axis=None)
    assert (np.diff(depth.ravel()[order]) < 0).all()
    assert depth.ravel()[order[-1]] == pytest.approx(1.0)  # the closest pixel
    assert depth.ravel()[order[0]] == pytest.approx(20.0)  # the farthest: 1 / eps
    # scale and shift of the disparity do not matter (Depth Anything's output is affine-invariant)
    np.testing.assert_allclose(disparity_to_depth(3.0 * disparity + 11.0, eps=0.05), depth, rtol=1e-5)


def test_disparity_to_depth_edge_cases():
    np.testing.assert_array_equal(disparity_to_depth(np.full((3, 4), 2.5)), np.ones((3, 4), np.float32))
    d = np.array([[0.0, np.nan], [np.inf, 1.0]])
    out = disparity_to_depth(d, eps=0.1)
    assert np.isnan(out[0, 1]) and np.isnan(out[1, 0])
    assert out[0, 0] == pytest.approx(10.0) and out[1, 1] == pytest.approx(1.0)
    assert np.isnan(disparity_to_depth(np.full((2, 2), np.nan))).all()
    with pytest.raises(ValueError, match="eps"):
        disparity_to_depth(d, eps=0.0)


class RampDisparity(torch.nn.Module):
    """Stands in for the network: disparity rising left to right (the right side is closest)."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, pixel_values):
        b, _, h, w = pixel_values.shape
        ramp = torch.linspace(0.0, 5.0, w).expand(b, h, w) * self.scale
        return SimpleNamespace(predicted_depth=ramp)


def test_model_output_goes_through_conversion_and_resizing():
    model = tiny(DA)
    model.model = RampDisparity()
    depth = model(image(24, 70))
    assert depth.shape == (24, 70)
    row = depth[0]
    assert (np.diff(row) <= 1e-6).all() and row[0] > 10 * row[-1]  # larger disparity -> smaller depth
    np.testing.assert_allclose(depth, depth[:1].repeat(24, 0), rtol=1e-6)  # constant down each column


# --- weights --------------------------------------------------------------------------------------------------


def test_offline_without_weights_names_hub_id_command_and_flag(no_network, tmp_path):
    with pytest.raises(WeightsUnavailableError) as info:
        build_depth_model(DA, weights=None, cache_dir=tmp_path / "empty_hf_cache")
    message = str(info.value)
    assert "depth-anything/Depth-Anything-V2-Small-hf" in message
    assert "hf download depth-anything/Depth-Anything-V2-Small-hf" in message and "--local-dir DIR" in message
    assert "--depth-weights DIR" in message and "offline" in message
    with pytest.raises(WeightsUnavailableError, match="Intel/zoedepth-nyu-kitti"):
        build_depth_model(ZOE, cache_dir=tmp_path / "empty_hf_cache")


def test_local_weights_folder_round_trip(da_model, tmp_path, no_network):
    folder = tmp_path / "da small"
    da_model.model.save_pretrained(folder)
    da_model.processor.save_pretrained(folder)
    loaded = build_depth_model(DA, weights=folder, input_size=56)
    img = image(33, 45)
    np.testing.assert_allclose(loaded(img), da_model(img), rtol=1e-5, atol=1e-5)
    assert loaded.weights_id == str(folder.resolve())
    assert loaded.cache_key != da_model.cache_key and loaded.cache_key.startswith(DA)
    # without preprocessor_config.json the official preprocessing is used
    (folder / "preprocessor_config.json").unlink()
    np.testing.assert_allclose(
        build_depth_model(DA, weights=folder, input_size=56)(img), da_model(img), rtol=1e-5, atol=1e-5
    )
    with pytest.raises(ValueError, match="config_overrides .* apply only to random"):
        build_depth_model(DA, weights=folder, config_overrides=tiny_config(DA))


def test_bad_weights_folders(tmp_path, no_network):
    with pytest.raises(WeightsUnavailableError, match="does not exist.*--depth-weights DIR"):
        build_depth_model(DA, weights=tmp_path / "missing")
    ckpt = tmp_path / "depth_anything_v2_vits.pth"
    ckpt.write_bytes(b"x")
    with pytest.raises(WeightsUnavailableError, match=r"is a file; a folder in Hugging Face format.*\.pth"):
        build_depth_model(DA, weights=ckpt)
    folder = tmp_path / "partial"
    folder.mkdir()
    with pytest.raises(WeightsUnavailableError, match="no config.json"):
        build_depth_model(DA, weights=folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "zoedepth"}))
    with pytest.raises(WeightsUnavailableError, match="no weights .*incomplete"):
        build_depth_model(DA, weights=folder)
    (folder / "model.safetensors").write_bytes(b"x")
    with pytest.raises(WeightsUnavailableError, match="holds a 'zoedepth' model.*use --depth zoedepth"):
        build_depth_model(DA, weights=folder)
    (folder / "config.json").write_text(json.dumps({"model_type": "depth_anything"}))
    with pytest.raises(WeightsUnavailableError, match="cannot load depth weights"):
        build_depth_model(DA, weights=folder)  # corrupt safetensors


# --- offline: fail fast (issue 11, item 17) ----------------------------------------------------------------------


@pytest.fixture
def blocked_network(monkeypatch):
    """The machine has no network (no DNS, no route), and nothing says offline: as on a cluster node."""

    def no_route(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_route)
    monkeypatch.setattr(socket, "create_connection", no_route)
    monkeypatch.setattr(socket.socket, "connect", no_route)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)


def test_blocked_network_without_weights_fails_within_3_s(da_model, blocked_network, tmp_path):
    import time

    start = time.perf_counter()  # da_model has imported the transformers classes: only the lookup is timed
    with pytest.raises(WeightsUnavailableError) as info:
        build_depth_model(DA, weights=None, cache_dir=tmp_path / "empty_hf_cache")
    elapsed = time.perf_counter() - start
    message = str(info.value)
    assert elapsed < 3.0, f"took {elapsed:.1f} s (the Hub client retries for about 25 s)"
    assert "cannot be reached" in message and "huggingface.co:443" in message
    assert "hf download depth-anything/Depth-Anything-V2-Small-hf" in message and "--depth-weights DIR" in message
    assert "\n" not in message


def test_hanging_name_resolution_is_cut_off_by_the_probe_timeout(monkeypatch, tmp_path):
    import time

    from cuts3d.depth import weights as models

    def hang(*args, **kwargs):
        time.sleep(5)  # a DNS server that never answers
        raise OSError("late")

    monkeypatch.setattr(socket, "create_connection", hang)
    start = time.perf_counter()
    reason = models._hub_unreachable(timeout=0.2)
    assert time.perf_counter() - start < 1.0
    assert reason == "no connection to huggingface.co:443 within 0.2 s"


def test_probe_goes_to_the_https_proxy_when_one_is_set(monkeypatch):
    from cuts3d.depth import weights as models

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "")
    assert models._hub_address() == ("proxy.example", 3128)
    monkeypatch.setenv("NO_PROXY", "huggingface.co")
    assert models._hub_address() == ("huggingface.co", 443)
