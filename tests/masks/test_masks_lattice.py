"""cuts3d's permutohedral lattice (cuts3d.masks.lattice) against pydensecrf's, bit for bit."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cuts3d.masks.crf import crf_available
from cuts3d.masks.lattice import Lattice, pixel_features, potts_messages
from cuts3d.synthetic import make_scene

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "coco_val2017_dev128" / "images"
needs_reference = pytest.mark.skipif(not crf_available(), reason="pydensecrf2 not installed")


def _images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    images = [
        make_scene(100, grid=40, channels=8, patch_size=8).image,
        rng.integers(0, 256, (37, 53, 3), dtype=np.uint8),  # N not a multiple of 4; noise: the table grows
        np.zeros((16, 24, 3), np.uint8),  # one colour
    ]
    for path in sorted(DATA.glob("*.jpg"))[:2] if DATA.is_dir() else []:
        images.append(np.asarray(Image.open(path).convert("RGB").resize((320, 240))))
    return images


def _pydensecrf_messages(image: np.ndarray, q: np.ndarray, kernels: dict) -> np.ndarray:
    """What DenseCRF::stepInference sums for a K-label CRF without unary: the Potts messages of q."""
    import pydensecrf.densecrf as dcrf
    import pydensecrf.eigen as eigen

    K, N = q.shape
    H, W = image.shape[:2]
    crf = dcrf.DenseCRF2D(W, H, K)
    crf.addPairwiseGaussian(sxy=kernels["pos_xy"], compat=kernels["pos_w"])
    crf.addPairwiseBilateral(sxy=kernels["bi_xy"], srgb=kernels["bi_rgb"], rgbim=np.array(image), compat=kernels["bi_w"])
    q_eigen, _, _ = crf.startInference()
    messages = eigen.matrixXf(np.zeros((K, N), np.float32))
    scratch = eigen.matrixXf(np.zeros((K, N), np.float32))
    np.asarray(q_eigen)[:] = q
    crf.stepInference(q_eigen, messages, scratch)
    return np.asarray(messages).copy()


def _messages(image: np.ndarray, q: np.ndarray, kernels: dict) -> np.ndarray:
    gauss = Lattice.build(pixel_features(image, kernels["pos_xy"]))
    bilateral = Lattice.build(pixel_features(image, kernels["bi_xy"], kernels["bi_rgb"]))
    return potts_messages([(gauss, kernels["pos_w"]), (bilateral, kernels["bi_w"])], q)


@needs_reference
@pytest.mark.parametrize("kernels", [
    dict(pos_xy=3.0, pos_w=7.0, bi_xy=50.0, bi_rgb=5.0, bi_w=10.0),  # MaskCut's
    dict(pos_xy=1.5, pos_w=3.0, bi_xy=20.0, bi_rgb=13.0, bi_w=4.0),
])
def test_messages_equal_pydensecrf_to_the_bit(kernels):
    rng = np.random.default_rng(1)
    for image in _images():
        N = image.shape[0] * image.shape[1]
        for K in (1, 2):  # pydensecrf filters 1 and 2 channels with its sequential code, which this copies
            q = rng.random((K, N), dtype=np.float32)
            np.testing.assert_array_equal(_messages(image, q, kernels), _pydensecrf_messages(image, q, kernels))


def test_channels_are_filtered_independently():
    image = _images()[0]
    kernels = dict(pos_xy=3.0, pos_w=7.0, bi_xy=50.0, bi_rgb=5.0, bi_w=10.0)
    q = np.random.default_rng(2).random((3, image.shape[0] * image.shape[1]), dtype=np.float32)
    together = _messages(image, q, kernels)
    for c in range(3):
        np.testing.assert_array_equal(together[c], _messages(image, q[c : c + 1], kernels)[0])


def test_filter_is_a_normalised_gaussian_blur():
    # Symmetric normalisation: the filter of a constant is about constant away from the borders, it is
    # linear, and a narrow kernel barely moves an impulse while a wide one spreads it.
    image = np.zeros((32, 32, 3), np.uint8)
    lattice = Lattice.build(pixel_features(image, 3.0))
    ones = lattice.filter(np.ones((1, 32 * 32), np.float32))[0].reshape(32, 32)
    assert np.allclose(ones[8:-8, 8:-8], ones[16, 16], rtol=0.05)
    a, b = np.random.default_rng(3).random((2, 1, 32 * 32), dtype=np.float32)
    np.testing.assert_allclose(lattice.filter(a + b), lattice.filter(a) + lattice.filter(b), rtol=1e-5, atol=1e-6)
    impulse = np.zeros((1, 32 * 32), np.float32)
    impulse[0, 16 * 32 + 16] = 1.0
    narrow = Lattice.build(pixel_features(image, 0.5)).filter(impulse)[0].reshape(32, 32)
    wide = lattice.filter(impulse)[0].reshape(32, 32)
    assert narrow[16, 16] > wide[16, 16] > 0 and wide[16, 20] > narrow[16, 20]


def test_features_of_more_than_six_dimensions_are_refused():
    with pytest.raises(ValueError, match="1 to 6 dimensions"):
        Lattice.build(np.zeros((10, 7), np.float32))
