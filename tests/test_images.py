"""Image data: loaders for the original MNIST/CIFAR-10 files and for prepared
tensorflow-datasets copies, class filters, and the resumable grain pipeline.

Every test writes small data sets in the original on-disk formats into `tmp_path`;
none reads the network or a real copy of the data.
"""

import gzip
import json
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image
from tensorflow_datasets.core import registered

import superdiff as sd


# --------------------------------------------------------------------------------
# Writers for the original formats


def _write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    """The IDX format: magic number 0x0000TTDD (TT = 08 for unsigned bytes, DD the
    number of dimensions), DD big-endian 32-bit sizes, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    raw = header + np.ascontiguousarray(array, np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def _digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = (np.arange(n) % 10).astype(np.uint8)
    return images, labels


def _write_mnist(folder: Path, split: str, n: int, compress: bool, seed: int = 0):
    folder.mkdir(parents=True, exist_ok=True)
    prefix = "train" if split == "train" else "t10k"
    suffix = ".gz" if compress else ""
    images, labels = _digits(n, seed)
    _write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images, compress)
    _write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
    return images, labels


def _write_cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """A CIFAR-10 "python version" batch: a pickled dict whose b"data" rows are the
    R, G and B planes of a 32x32 image, one after the other."""
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = {
        b"batch_label": b"fake batch",
        b"labels": [int(label) for label in labels],
        b"data": images.transpose(0, 3, 1, 2).reshape(len(images), 3072),
        b"filenames": [b"img_%d.png" % i for i in range(len(images))],
    }
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)


def _colour_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, 10, n),
    )


def _identity_source(n: int) -> sd.data.ImageArrays:
    """Example i has label i and all pixels i % 256: the label identifies it."""
    images = np.broadcast_to(
        (np.arange(n) % 256).astype(np.uint8)[:, None, None, None], (n, 2, 2, 1)
    )
    return sd.data.ImageArrays(images, np.arange(n))


def _take(iterator, count: int) -> list:
    return [next(iterator) for _ in range(count)]


# --------------------------------------------------------------------------------
# The original files


@pytest.mark.parametrize("compress", [True, False])
@pytest.mark.parametrize("split", ["train", "test"])
def test_mnist_files(tmp_path, split, compress):
    images, labels = _write_mnist(tmp_path, split, 23, compress)
    source = sd.data.load_images("mnist", split, tmp_path, source="files")
    assert len(source) == 23
    np.testing.assert_array_equal(source.labels, labels)
    for i in (0, 7, 22):
        record = source[i]
        assert record["image"].dtype == np.uint8
        assert record["image"].shape == (28, 28, 1)
        np.testing.assert_array_equal(record["image"][..., 0], images[i])
        assert type(record["label"]) is int and record["label"] == labels[i]


def test_mnist_files_in_a_subfolder_named_after_the_data_set(tmp_path):
    images, _ = _write_mnist(tmp_path / "mnist", "test", 5, compress=True)
    source = sd.data.load_images("mnist", "test", tmp_path)  # source="auto"
    assert isinstance(source, sd.data.ImageArrays)
    np.testing.assert_array_equal(source.images[..., 0], images)


@pytest.mark.parametrize("inside", [False, True])
def test_cifar10_files(tmp_path, inside):
    folder = tmp_path / "cifar-10-batches-py"
    first, second, test = (_colour_images(n, s) for n, s in ((6, 0), (4, 1), (5, 2)))
    _write_cifar_batch(folder / "data_batch_1", *first)
    _write_cifar_batch(folder / "data_batch_2", *second)
    _write_cifar_batch(folder / "test_batch", *test)
    data_dir = folder if inside else tmp_path
    with pytest.warns(
        UserWarning, match=r"found 2 of 5 training batches \(10 of 50,000 images\)"
    ):
        train = sd.data.load_images("cifar10", "train", data_dir, source="files")
    assert len(train) == 10
    np.testing.assert_array_equal(train.labels, np.concatenate([first[1], second[1]]))
    np.testing.assert_array_equal(train[7]["image"], second[0][1])
    assert train[7]["image"].shape == (32, 32, 3)
    test_source = sd.data.load_images("cifar10", "test", data_dir, source="files")
    np.testing.assert_array_equal(test_source[4]["image"], test[0][4])
    assert test_source[4]["label"] == test[1][4]


def test_cifar10_planes_are_red_green_blue(tmp_path):
    # A row of b"data" is 1024 red values, then 1024 green, then 1024 blue.
    row = np.repeat(np.array([10, 20, 30], np.uint8), 1024)
    batch = {b"data": row[None], b"labels": [3]}
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch, f, protocol=2)
    image = sd.data.load_images("cifar10", "test", tmp_path)[0]["image"]
    assert image.shape == (32, 32, 3)
    np.testing.assert_array_equal(image[5, 17], [10, 20, 30])


def test_cifar10_batch_may_hold_only_arrays(tmp_path):
    # A pickle can name any callable; a CIFAR-10 batch needs only numpy's.
    class Exploit:
        def __reduce__(self):
            return (print, ("unpickled code ran",))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": Exploit(), b"labels": []}, f, protocol=2)
    with pytest.raises(ValueError, match=r"only numpy arrays.*\.print"):
        sd.data.load_images("cifar10", "test", tmp_path)


def test_corrupt_idx_files(tmp_path):
    images, labels = _digits(4, 0)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels, compress=False)
    image_path = tmp_path / "t10k-images-idx3-ubyte"

    image_path.write_bytes(b"\x50\x4b\x03\x04" + bytes(100))  # a zip file's magic
    with pytest.raises(ValueError, match=r"not an IDX file.*0x504b0304"):
        sd.data.load_images("mnist", "test", tmp_path)

    _write_idx(image_path, images, compress=False)
    image_path.write_bytes(image_path.read_bytes()[:-5])
    with pytest.raises(ValueError, match=r"truncated or corrupt.*\(4, 28, 28\)"):
        sd.data.load_images("mnist", "test", tmp_path)

    _write_idx(image_path, labels, compress=False)  # a labels file in its place
    with pytest.raises(ValueError, match=r"should hold MNIST images.*\(4,\)"):
        sd.data.load_images("mnist", "test", tmp_path)

    _write_idx(image_path, images[:3], compress=False)
    with pytest.raises(ValueError, match="has 3 images but .* has 4 labels"):
        sd.data.load_images("mnist", "test", tmp_path)

    image_path.write_bytes(gzip.compress(b"anything")[:12])
    with pytest.raises(ValueError, match="corrupt gzip"):
        sd.data.load_images("mnist", "test", tmp_path)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_missing_data_names_both_ways_to_provide_it(tmp_path, name):
    with pytest.raises(sd.data.DataNotFoundError) as info:
        sd.data.load_images(name, "train", tmp_path)
    assert isinstance(info.value, FileNotFoundError)
    message = str(info.value)
    # The two ways: tensorflow-datasets ...
    assert f'tfds.builder("{name}", data_dir=DIR).download_and_prepare(' in message
    assert 'file_format="array_record"' in message
    assert "superdiff[tfds-prepare]" in message
    # ... and the original files, by name, with where to get them.
    if name == "mnist":
        assert "train-images-idx3-ubyte.gz" in message
        assert "train-labels-idx1-ubyte.gz" in message
        assert "yann.lecun.com/exdb/mnist" in message
    else:
        assert "cifar-10-batches-py" in message and "data_batch_1" in message
        assert "cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in message
    # Where it looked.
    assert str(tmp_path) in message


def test_missing_data_without_a_folder():
    with pytest.raises(sd.data.DataNotFoundError, match="no `data_dir` given"):
        sd.data.load_images("mnist", "test", None, source="files")


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="`name` must be one of .* got 'svhn'"):
        sd.data.load_images("svhn")  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="`split` must be one of .* got 'val'"):
        sd.data.load_images("mnist", "val")  # pyright: ignore[reportArgumentType]
    with pytest.raises(ValueError, match="uint8 array of shape"):
        sd.data.ImageArrays(np.zeros((2, 3, 3, 1), np.float32), np.zeros(2, int))


# --------------------------------------------------------------------------------
# Class filters


def test_class_filter_is_an_index_map(tmp_path):
    _write_mnist(tmp_path, "train", 40, compress=True)
    source = sd.data.load_images("mnist", "train", tmp_path)
    subset = sd.data.select_classes(source, (0, 1, 2, 3, 4))
    assert len(subset) == 20
    loaded = sd.data.load_images("mnist", "train", tmp_path, classes=(0, 1, 2, 3, 4))
    np.testing.assert_array_equal(loaded.labels, subset.labels)
    np.testing.assert_array_equal(
        subset.labels, np.arange(40)[np.arange(40) % 10 < 5] % 10
    )
    kept = np.flatnonzero(source.labels < 5)
    for i in (0, 9, 19):
        assert subset[i]["label"] == source[kept[i]]["label"]
        np.testing.assert_array_equal(subset[i]["image"], source[kept[i]]["image"])
    # A view of the loaded array, not a copy.
    assert isinstance(source, sd.data.ImageArrays)
    assert np.shares_memory(subset[3]["image"], source.images)
    # Filters compose.
    assert sd.data.select_classes(subset, [4]).labels.tolist() == [4] * 4


def test_class_filter_rejects_absent_or_repeated_classes():
    source = _identity_source(5)
    with pytest.raises(ValueError, match=r"labels \[7\], which no example"):
        sd.data.select_classes(source, [1, 7])
    with pytest.raises(ValueError, match="distinct"):
        sd.data.select_classes(source, [1, 1])


# --------------------------------------------------------------------------------
# The pipeline


def test_batches_are_scaled_to_minus_one_one():
    images = np.zeros((3, 4, 5, 3), np.uint8)
    images[1] = 255
    images[2] = np.arange(60, dtype=np.uint8).reshape(4, 5, 3) * 4
    source = sd.data.ImageArrays(images, np.array([0, 1, 2]))
    x, y = next(iter(sd.data.image_batches(source, 3, shuffle=False, num_epochs=1)))
    assert x.shape == (3, 4, 5, 3) and x.dtype == np.float32
    assert y.dtype == np.int32 and y.tolist() == [0, 1, 2]
    assert np.all(x[0] == -1.0) and np.all(x[1] == 1.0)  # exact, not approximate
    # v / 127.5 - 1 in float32: within one rounding of the exact value.
    exact = images[2].astype(np.float64) / 127.5 - 1
    np.testing.assert_allclose(
        x[2], exact, rtol=0, atol=2 * float(np.finfo(np.float32).eps)
    )


def test_shuffle_is_reproducible_by_seed():
    source = _identity_source(50)
    order = lambda seed: [
        y.tolist()
        for _, y in _take(iter(sd.data.image_batches(source, 10, seed=seed)), 10)
    ]
    first = order(0)
    assert first == order(0)
    assert first != order(1)
    assert first[:5] != first[5:]  # each epoch is shuffled anew
    assert sorted(sum(first[:5], [])) != sum(first[:5], [])  # and shuffled at all


@pytest.mark.parametrize(
    "batch_size, drop_remainder", [(8, True), (8, False), (5, True)]
)
def test_each_epoch_shows_every_example_once(batch_size, drop_remainder):
    n, num_epochs = 37, 3
    source = _identity_source(n)
    pipeline = sd.data.image_batches(
        source, batch_size, seed=3, num_epochs=num_epochs, drop_remainder=drop_remainder
    )
    batches = [y.tolist() for _, y in pipeline]
    per_epoch = n // batch_size if drop_remainder else -(-n // batch_size)
    assert len(batches) == num_epochs * per_epoch
    for epoch in range(num_epochs):
        seen = sum(batches[epoch * per_epoch : (epoch + 1) * per_epoch], [])
        assert len(set(seen)) == len(seen)  # no example twice
        assert len(seen) == (n - n % batch_size if drop_remainder else n)
    if drop_remainder:
        assert all(len(b) == batch_size for b in batches)


def test_evaluation_order_and_images_only():
    source = _identity_source(7)
    batches = list(
        sd.data.image_batches(
            source, 3, shuffle=False, num_epochs=1, drop_remainder=False,
            with_labels=False,
        )
    )  # fmt: skip
    assert [b.shape[0] for b in batches] == [3, 3, 1]
    pixels = np.concatenate([b[:, 0, 0, 0] for b in batches])
    np.testing.assert_array_equal(
        pixels, np.arange(7, dtype=np.float32) / np.float32(127.5) - np.float32(1)
    )


def test_resumed_iterator_continues_with_the_same_batches():
    source = sd.data.select_classes(_identity_source(60), range(0, 60, 2))
    pipeline = sd.data.image_batches(source, 7, seed=11)  # 4 batches per epoch
    uninterrupted = iter(pipeline)
    _take(uninterrupted, 6)
    state = uninterrupted.get_state()
    expected = _take(uninterrupted, 9)  # crosses two epoch boundaries

    # A fresh pipeline, as after a restart, with the state through a JSON file.
    restored = sd.data.image_batches(source, 7, seed=11)
    resumed = iter(restored)
    resumed.set_state(json.loads(json.dumps(state)))
    for (x, y), (x_expected, y_expected) in zip(
        _take(resumed, 9), expected, strict=True
    ):
        np.testing.assert_array_equal(x, x_expected)
        np.testing.assert_array_equal(y, y_expected)


def test_horizontal_flips_are_per_example_keyed_and_resumable(tmp_path):
    # A partial CIFAR-10 copy (two of five training batches) through the pipeline
    # with flips: every image comes out as itself or its mirror image (left-right),
    # about half of them mirrored, independently per example; the same seed flips
    # the same ones, a resumed iterator too, and the next epoch flips others.
    folder = tmp_path / "cifar-10-batches-py"
    first, second = _colour_images(40, 0), _colour_images(24, 1)
    _write_cifar_batch(folder / "data_batch_1", *first)
    _write_cifar_batch(folder / "data_batch_4", *second)
    with pytest.warns(UserWarning, match=r"found 2 of 5 .* \(64 of 50,000 images\)"):
        source = sd.data.load_images("cifar10", "train", tmp_path)
    images = np.concatenate([first[0], second[0]])
    scale = lambda x: x.astype(np.float32) / np.float32(127.5) - np.float32(1)

    def flips(batches):
        out = []
        for x, y in batches:
            for image, label in zip(x, y, strict=True):
                plain = np.array_equal(image, scale(images[label]))
                mirror = np.array_equal(image, scale(images[label][:, ::-1]))
                assert plain != mirror  # one of the two, and random images differ
                out.append(mirror)
        return out

    # Labels that identify the examples: example i relabelled i.
    assert isinstance(source, sd.data.ImageArrays)
    source = sd.data.ImageArrays(source.images, np.arange(64))
    pipeline = lambda flip: sd.data.image_batches(
        source, 16, seed=3, shuffle=False, horizontal_flip=flip
    )
    it = iter(pipeline(True))
    epoch1 = flips(_take(it, 4))
    state = it.get_state()
    epoch2 = flips(_take(it, 4))
    assert 16 <= sum(epoch1) <= 48 and 16 <= sum(epoch2) <= 48  # 8 sd from 32
    assert epoch1 != epoch2  # each epoch draws its flips anew
    assert flips(_take(iter(pipeline(True)), 4)) == epoch1  # keyed by the seed
    resumed = iter(pipeline(True))
    resumed.set_state(state)
    assert flips(_take(resumed, 4)) == epoch2
    assert not any(flips(_take(iter(pipeline(False)), 4)))  # off by default


def test_pipeline_rejects_impossible_batches():
    source = _identity_source(5)
    with pytest.raises(ValueError, match="larger than the data set"):
        sd.data.image_batches(source, 6)
    with pytest.raises(ValueError, match="`batch_size` must be positive"):
        sd.data.image_batches(source, 0)
    with pytest.raises(ValueError, match="`num_epochs` must be positive"):
        sd.data.image_batches(source, 2, num_epochs=0)


# --------------------------------------------------------------------------------
# tensorflow-datasets
#
# `tfds.testing.mock_data` runs without TensorFlow, but its mocked sources do not
# support batched reads (`__getitems__`), which the loader uses. Instead these
# tests write real ArrayRecord copies in the layout `tfds.data_source` reads,
# with stand-in builders of the same name, version and features (writing PNGs
# through PIL needs no TensorFlow), so the real reading and decoding run.


def _prepare_tfds_copy(name: str, data_dir: Path, splits: dict) -> None:
    real = tfds.builder(name, data_dir=str(data_dir))
    features: Any = real.info.features

    def generate(split):
        for i, (image, label) in enumerate(zip(*splits[split], strict=True)):
            example = {
                "image": Image.fromarray(
                    image.squeeze(-1) if image.shape[-1] == 1 else image
                ),
                "label": int(label),
            }
            if "id" in features:
                example["id"] = f"{split}_{i}"
            yield i, example

    with registered.skip_registration():

        class StandIn(tfds.core.GeneratorBasedBuilder):
            VERSION = real.version

            def _info(self):
                return tfds.core.DatasetInfo(builder=self, features=features)

            def _split_generators(self, dl_manager):
                return {split: generate(split) for split in splits}

            def _generate_examples(self):
                raise NotImplementedError

        StandIn.name = name
        StandIn(
            data_dir=str(data_dir), file_format="array_record"
        ).download_and_prepare()


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    digits, digit_labels = _digits(30, 0)
    colour, colour_labels = _colour_images(12, 1)
    _prepare_tfds_copy(
        "mnist",
        data_dir,
        {
            "train": (digits[..., None], digit_labels),
            "test": (digits[:4, ..., None], digit_labels[:4]),
        },
    )
    _prepare_tfds_copy("cifar10", data_dir, {"test": (colour, colour_labels)})
    return data_dir, (digits[..., None], digit_labels), (colour, colour_labels)


def _match(records_images, images) -> list[int]:
    """Where each image is in `images` (tensorflow-datasets reorders records)."""
    flat = images.reshape(len(images), -1)
    return [
        int(np.flatnonzero((flat == im.reshape(-1)).all(1))[0]) for im in records_images
    ]


@pytest.mark.parametrize("source", ["tfds", "auto"])
def test_tfds_copy(tfds_dir, source):
    data_dir, (digits, digit_labels), (colour, colour_labels) = tfds_dir
    mnist = sd.data.load_images("mnist", "train", data_dir, source=source)
    assert len(mnist) == 30 and not isinstance(mnist, sd.data.ImageArrays)
    records = [mnist[i] for i in range(30)]
    where = _match([r["image"] for r in records], digits)
    assert sorted(where) == list(range(30))
    assert [r["label"] for r in records] == digit_labels[where].tolist()
    assert mnist.labels.tolist() == digit_labels[where].tolist()
    assert records[0]["image"].shape == (28, 28, 1)

    cifar = sd.data.load_images("cifar10", "test", data_dir, source=source)
    record = cifar[5]
    assert record["image"].shape == (32, 32, 3) and record["image"].dtype == np.uint8
    (j,) = _match([record["image"]], colour)
    assert record["label"] == colour_labels[j]


def test_tfds_copy_through_the_pipeline(tfds_dir):
    data_dir, (digits, digit_labels), _ = tfds_dir
    subset = sd.data.load_images(
        "mnist", "train", data_dir, source="tfds", classes=[1, 2]
    )
    assert len(subset) == 6 and set(subset.labels.tolist()) == {1, 2}
    batches = list(sd.data.image_batches(subset, 3, seed=0, num_epochs=1))
    assert len(batches) == 2
    images = np.concatenate([x for x, _ in batches])
    labels = np.concatenate([y for _, y in batches])
    where = _match(np.round((images + 1) * 127.5).astype(np.uint8), digits)
    assert labels.tolist() == digit_labels[where].tolist()
    assert set(labels.tolist()) == {1, 2}


def test_tfds_copy_in_tfrecord_format_is_explained(tfds_dir, monkeypatch):
    data_dir, _, _ = tfds_dir

    def tfrecord_only(self, *args, **kwargs):
        raise NotImplementedError("Random access ... FileFormat.TFRECORD")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "as_data_source", tfrecord_only)
    with pytest.raises(ValueError, match='file_format="array_record"'):
        sd.data.load_images("mnist", "test", data_dir, source="tfds")
