"""FID: the TorchScript reader, the Fréchet distance against closed forms, the
Inception port against reference features, statistics caching."""

import collections
import importlib.metadata
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import superdiff as sd
from superdiff.metrics import _fid, _inception
from superdiff.metrics._torchscript import read_torchscript


FIXTURE = Path(__file__).parent / "fixtures" / "inception_elefant.npz"


def _has_fid_extra() -> bool:
    try:
        sd.metrics.inception_weights_path()
    except sd.metrics.MissingWeightsError:
        return False
    return True


needs_weights = pytest.mark.skipif(
    not _has_fid_extra(),
    reason="needs the FID Inception weights: install the extra with "
    "`uv sync --extra fid`",
)


# --------------------------------------------------------------------------------
# A TorchScript-like archive written here: the opcodes torch.jit.save emits
# (GLOBAL torch._utils._rebuild_tensor_v2, persistent storage ids, NEWOBJ + BUILD
# of `__torch__` classes), without torch.


class _Global:
    def __init__(self, module: str, name: str):
        self.module, self.name = module, name


class _Storage:
    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, array


class _Tensor:
    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())


class _Module:
    def __init__(self, type_name: str, state: dict):
        self.type_name, self.state = type_name, state


# The pure-Python pickler, whose `save` can be overridden (the C one's cannot).
_PythonPickler: Any = pickle._Pickler


class _TorchLikePickler(_PythonPickler):
    def persistent_id(self, obj):
        if isinstance(obj, _Storage):
            dtype = {np.float32: "FloatStorage", np.int64: "LongStorage"}
            kind = _Global("torch", dtype[obj.array.dtype.type])
            return ("storage", kind, obj.key, "cpu", obj.array.size)
        return None

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        elif isinstance(obj, _Tensor):
            self.save(_Global("torch._utils", "_rebuild_tensor_v2"))
            self.save(obj.args)
            self.write(pickle.REDUCE)
        elif isinstance(obj, _Module):
            module, _, name = obj.type_name.rpartition(".")
            self.save(_Global(module, name))
            self.save(())
            self.write(pickle.NEWOBJ)
            self.save(obj.state)
            self.write(pickle.BUILD)
        else:
            super().save(obj, save_persistent_id)


def _write_archive(path: Path, tree, storages: list[_Storage]) -> None:
    buffer = io.BytesIO()
    _TorchLikePickler(buffer, protocol=2).dump(tree)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", buffer.getvalue())
        archive.writestr("archive/version", "3\n")
        for storage in storages:
            archive.writestr(f"archive/data/{storage.key}", storage.array.tobytes())


def test_torchscript_reader_rebuilds_tensors_and_names(tmp_path):
    weights = np.arange(24, dtype=np.float32)
    counts = np.array([7, -3, 11], np.int64)
    shared, other = _Storage("0", weights), _Storage("1", counts)
    child = _Module(
        "__torch__.tiny.Conv",
        {
            "training": False,
            "stride": 2,
            "weight": _Tensor(shared, 0, (2, 3, 4), (12, 4, 1)),
            # A transposed view with an offset into the same storage.
            "view": _Tensor(shared, 4, (2, 3), (1, 2)),
        },
    )
    root = _Module(
        "__torch__.tiny.Net",
        {"training": False, "conv": child, "counts": _Tensor(other, 1, (2,), (1,))},
    )
    path = tmp_path / "tiny.pt"
    _write_archive(path, root, [shared, other])

    tensors = read_torchscript(path)

    assert set(tensors) == {"conv.weight", "conv.view", "counts"}
    np.testing.assert_array_equal(tensors["conv.weight"], weights.reshape(2, 3, 4))
    view = [[weights[4 + i + 2 * j] for j in range(3)] for i in range(2)]
    np.testing.assert_array_equal(tensors["conv.view"], view)
    np.testing.assert_array_equal(tensors["counts"], [-3, 11])
    assert tensors["counts"].dtype == np.int64


def test_torchscript_reader_refuses_other_globals(tmp_path):
    root = _Module("__torch__.tiny.Net", {"bad": _Global("os", "system")})
    path = tmp_path / "bad.pt"
    _write_archive(path, root, [])
    with pytest.raises(pickle.UnpicklingError, match="os.system"):
        read_torchscript(path)


def test_torchscript_reader_refuses_non_archives(tmp_path):
    path = tmp_path / "plain.pt"
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="zip"):
        read_torchscript(path)


# --------------------------------------------------------------------------------
# The Fréchet distance


def test_gaussian_frechet_distance_commuting_closed_form():
    # With Σ₁ = Q diag(a) Qᵀ and Σ₂ = Q diag(b) Qᵀ the trace term is
    # Σᵢ (√aᵢ − √bᵢ)², exactly.
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    value = sd.metrics.gaussian_frechet_distance(mu1, (q * a) @ q.T, mu2, (q * b) @ q.T)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert value == pytest.approx(expected, rel=1e-10)


def test_gaussian_frechet_distance_general_covariances():
    # Non-commuting covariances: the textbook tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^{1/2}) with
    # scipy's sqrtm of the non-symmetric product.
    rng = np.random.default_rng(1)
    m1, m2 = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = m1 @ m1.T + 0.1 * np.eye(5), m2 @ m2.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    root = np.real(scipy.linalg.sqrtm(s1 @ s2))
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * root)
    value = sd.metrics.gaussian_frechet_distance(mu1, s1, mu2, s2)
    assert value == pytest.approx(expected, rel=1e-9)
    assert sd.metrics.gaussian_frechet_distance(mu1, s1, mu1, s1) == pytest.approx(
        0, abs=1e-9
    )


def test_gaussian_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(f,\) and covariances \(f, f\)"):
        sd.metrics.gaussian_frechet_distance(
            np.zeros(3), np.eye(3), np.zeros(4), np.eye(4)
        )


def test_feature_statistics_match_frechet_distance_of_features():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(50, 4)), rng.normal(1.0, 2.0, size=(60, 4))
    stats_x, stats_y = (sd.metrics.FeatureStatistics.of(f) for f in (x, y))
    assert stats_x.count == 50
    assert stats_x.frechet_distance(stats_y) == pytest.approx(
        sd.metrics.frechet_distance(x, y), rel=1e-12
    )


def test_feature_statistics_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    stats = sd.metrics.FeatureStatistics.of(rng.normal(size=(10, 3)))
    stats.save(tmp_path / "sub" / "s.npz")
    back = sd.metrics.FeatureStatistics.load(tmp_path / "sub" / "s.npz")
    np.testing.assert_array_equal(back.mu, stats.mu)
    np.testing.assert_array_equal(back.sigma, stats.sigma)
    assert back.count == 10
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["s.npz"]


# --------------------------------------------------------------------------------
# The network (random weights: no extra needed)


@pytest.fixture(scope="module")
def random_inception():
    return sd.metrics.InceptionV3(key=jax.random.key(0), resize=False)


def test_resize_is_torch_bilinear_without_antialiasing():
    # torch's interpolate(bilinear, align_corners=False): source coordinate
    # (i + 1/2) · in/out − 1/2, clamped at 0; neighbours clamped at the edge.
    def torch_bilinear(image, size):
        def axis_weights(n_in):
            src = np.maximum((np.arange(size) + 0.5) * n_in / size - 0.5, 0)
            lo = np.floor(src).astype(int)
            hi = np.minimum(lo + 1, n_in - 1)
            matrix = np.zeros((size, n_in))
            matrix[np.arange(size), lo] += 1 - (src - lo)
            matrix[np.arange(size), hi] += src - lo
            return matrix

        rows, cols = axis_weights(image.shape[0]), axis_weights(image.shape[1])
        return np.einsum("ih,jw,hwc->ijc", rows, cols, image)

    rng = np.random.default_rng(4)
    for shape in [(5, 7, 3), (40, 33, 3)]:  # up- and downsampling
        image = rng.uniform(-1, 1, shape)
        ours = np.asarray(_inception._resize(jnp.asarray(image), 17))
        np.testing.assert_allclose(ours, torch_bilinear(image, 17), atol=1e-12)


def test_inception_features_in_batches_any_order_and_dtype(random_inception):
    # Three images in chunks of two (the last padded): uint8 in one order, floats
    # in [-1, 1] in the reverse order, so every image lands in another chunk
    # position. Float32 through 94 convolutions whose batched kernels sum in
    # another order: differences of ~1e-6 on features of order 0.1-1.
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (3, 75, 75, 3), dtype=np.uint8)
    features = sd.metrics.inception_features(
        random_inception, images, batch_size=2, progress=False
    )
    assert features.shape == (3, 2048) and features.dtype == np.float32
    reversed_floats = sd.metrics.inception_features(
        random_inception, images[::-1] / 127.5 - 1, batch_size=2, progress=False
    )
    np.testing.assert_allclose(features, reversed_floats[::-1], rtol=1e-4, atol=1e-5)
    assert np.all(features >= 0) and np.std(features) > 0  # means of ReLUs
    assert not np.allclose(features[0], features[1], rtol=1e-2)


def test_inception_rejects_bad_input(random_inception):
    with pytest.raises(ValueError, match=r"\(h, w, 3\).*got shape \(2, 75, 75, 3\)"):
        random_inception(jnp.zeros((2, 75, 75, 3)))
    with pytest.raises(ValueError, match=r"\(n, h, w, 3\).*got shape \(75, 75\)"):
        sd.metrics.inception_features(random_inception, np.zeros((75, 75)))
    with pytest.raises(ValueError, match="`batch_size` must be at least 1; got 0"):
        sd.metrics.inception_features(
            random_inception, np.zeros((1, 75, 75, 3)), batch_size=0
        )
    with pytest.raises(ValueError, match="exactly one of `weights`"):
        sd.metrics.InceptionV3()


def test_inception_from_weights_checks_names_and_shapes(random_inception):
    with pytest.raises(ValueError, match="lack 'conv.weight'"):
        sd.metrics.InceptionV3({})
    weights = {
        "conv.weight": np.zeros((32, 3, 5, 5)),
        "conv.beta": np.zeros(32),
        "conv.mean": np.zeros(32),
        "conv.var": np.ones(32),
    }
    with pytest.raises(ValueError, match=r"conv.weight of shape \(32, 3, 3, 3\)"):
        sd.metrics.InceptionV3(weights)


def test_dataset_statistics_are_cached(random_inception, tmp_path, monkeypatch):
    rng = np.random.default_rng(6)
    source = sd.data.ImageArrays(
        rng.integers(0, 256, (5, 75, 75, 3), dtype=np.uint8), np.zeros(5, np.int64)
    )
    first = sd.metrics.dataset_statistics(
        random_inception,
        source,
        "tiny-train",
        4,
        cache_dir=tmp_path,
        batch_size=2,
        progress=False,
    )
    digest = sd.metrics.model_digest(random_inception)
    assert [p.name for p in tmp_path.iterdir()] == [f"tiny-train-4-{digest}.npz"]
    assert first.count == 4 and first.mu.shape == (2048,)

    def no_recompute(*args, **kwargs):
        raise AssertionError("statistics recomputed despite the cache")

    monkeypatch.setattr(_fid, "inception_features", no_recompute)
    again = sd.metrics.dataset_statistics(
        random_inception, source, "tiny-train", 4, cache_dir=tmp_path
    )
    np.testing.assert_array_equal(again.sigma, first.sigma)
    other = sd.metrics.InceptionV3(key=jax.random.key(1), resize=False)
    assert sd.metrics.model_digest(other) != digest
    with pytest.raises(ValueError, match="between 2 and the 5 images"):
        sd.metrics.dataset_statistics(random_inception, source, "tiny", 6)


# --------------------------------------------------------------------------------
# The weights


def test_missing_extra_names_the_extra(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(sd.metrics.MissingWeightsError, match="uv sync --extra fid"):
        sd.metrics.InceptionV3.pretrained()


def test_checksum_failure_names_the_file(tmp_path):
    path = tmp_path / "default_1.pt"
    path.write_bytes(b"tampered")
    with pytest.raises(ValueError, match=f"{path}.*SHA-256"):
        sd.metrics.load_inception_weights(path)


@needs_weights
def test_pretrained_features_match_reference_fixture():
    # jax-fid's features of one 256×256 image, fed unresized (see
    # tests/fixtures/README.md). Float32 convolutions in another order and the
    # batch norm folded into the weights: differences of a few 1e-6 measured.
    fixture = np.load(FIXTURE)
    model = sd.metrics.InceptionV3.pretrained(resize=False)
    features = sd.metrics.inception_features(
        model, fixture["image"][None], progress=False
    )[0]
    reference = fixture["features"]
    error = np.abs(features - reference)
    assert error.max() / np.abs(reference).max() < 1e-4
    assert np.linalg.norm(features - reference) / np.linalg.norm(reference) < 1e-4
    big = np.abs(reference) > 1e-2
    np.testing.assert_allclose(features[big], reference[big], rtol=1e-4)
