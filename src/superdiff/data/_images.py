"""Image data sets (MNIST, CIFAR-10) as grain sources, from the original files or
from tensorflow-datasets, and the shuffled, batched, resumable pipeline over them."""

import abc
import functools
import gzip
import math
import pickle
import struct
import warnings
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict

import grain
import numpy as np
from jaxtyping import Float32, Int, Int32, UInt8


DatasetName = Literal["mnist", "cifar10"]
Split = Literal["train", "test"]

_NAMES = ("mnist", "cifar10")
_SPLITS = ("train", "test")
_SOURCES = ("auto", "files", "tfds")


class ImageRecord(TypedDict):
    """One example: an image in height-width-channel layout and its class."""

    image: UInt8[np.ndarray, "h w c"]
    label: int


class ImageBatch(TypedDict):
    """Examples stacked along a first axis."""

    image: UInt8[np.ndarray, "b h w c"]
    label: Int[np.ndarray, " b"]


class DataNotFoundError(FileNotFoundError):
    """A data set is not where `load_images` looked. The message lists where it
    looked and the two ways to provide the data."""


# --------------------------------------------------------------------------------
# Sources


class ImageSource(abc.ABC):
    """A grain random-access data source of `ImageRecord`s: `len(source)` examples,
    `source[i]` the `i`-th, and `source.labels` all their classes at once (which is
    what class filters read, without touching the images)."""

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @abc.abstractmethod
    def __getitem__(self, index: int) -> ImageRecord: ...

    @property
    @abc.abstractmethod
    def labels(self) -> Int[np.ndarray, " n"]:
        """The class of every example, in order."""

    def gather(self, indices: Int[np.ndarray, " b"]) -> ImageBatch:
        """The examples at `indices`, stacked: what the pipeline reads, one batch
        per call. Subclasses read them at once where they can."""
        records = [self[int(i)] for i in indices]
        return {
            "image": np.stack([r["image"] for r in records]),
            "label": np.array([r["label"] for r in records], np.int64),
        }


class ImageArrays(ImageSource):
    """Images held in memory as one `uint8` array.

    **Arguments:**

    - `images`: `uint8` array of shape `(n, height, width, channels)`.
    - `labels`: integer array of shape `(n,)`.
    - `name`: shown in `repr`, e.g. `"mnist/train"`.

    `source[i]` returns views into `images`, never copies; the arrays are made
    read-only so that no record can change the data set.
    """

    images: UInt8[np.ndarray, "n h w c"]
    _labels: Int[np.ndarray, " n"]
    name: str

    def __init__(
        self,
        images: UInt8[np.ndarray, "n h w c"],
        labels: Int[np.ndarray, " n"],
        name: str = "images",
    ):
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                "`images` must be a uint8 array of shape (n, height, width, "
                f"channels); got {images.dtype} of shape {images.shape}."
            )
        if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (
            images.shape[0],
        ):
            raise ValueError(
                f"`labels` must be an integer array of shape ({images.shape[0]},), "
                f"one per image; got {labels.dtype} of shape {labels.shape}."
            )
        images = images.view()
        labels = labels.astype(np.int64)
        images.flags.writeable = False
        labels.flags.writeable = False
        self.images = images
        self._labels = labels
        self.name = name

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> ImageRecord:
        return {"image": self.images[index], "label": int(self._labels[index])}

    @property
    def labels(self) -> Int[np.ndarray, " n"]:
        return self._labels

    def gather(self, indices: Int[np.ndarray, " b"]) -> ImageBatch:
        return {"image": self.images[indices], "label": self._labels[indices]}

    def __repr__(self) -> str:
        return (
            f"ImageArrays(name={self.name!r}, n={len(self)}, "
            f"image_shape={self.images.shape[1:]})"
        )


class _ClassSubset(ImageSource):
    """The examples of `parent` whose class is in `classes`, through an index map."""

    def __init__(self, parent: ImageSource, classes: tuple[int, ...]):
        self.parent = parent
        self.classes = classes
        self.indices = np.flatnonzero(np.isin(parent.labels, classes))
        self._labels = parent.labels[self.indices]

    def __len__(self) -> int:
        return self.indices.shape[0]

    def __getitem__(self, index: int) -> ImageRecord:
        return self.parent[int(self.indices[index])]

    @property
    def labels(self) -> Int[np.ndarray, " n"]:
        return self._labels

    def gather(self, indices: Int[np.ndarray, " b"]) -> ImageBatch:
        return self.parent.gather(self.indices[indices])

    def __repr__(self) -> str:
        return f"{self.parent!r}[classes={self.classes}, n={len(self)}]"


def select_classes(source: ImageSource, classes: Sequence[int]) -> ImageSource:
    """The examples of `source` whose label is one of `classes`, in their original
    order and with their original labels (digit 7 stays 7).

    An index map over `source`: no image is copied.

    **Arguments:**

    - `source`: any `ImageSource`, e.g. from `load_images`.
    - `classes`: the labels to keep, e.g. `(0, 1, 2, 3, 4)` for the digits 0-4 of
        MNIST, or airplane, automobile, bird, cat, deer of CIFAR-10.
    """
    wanted = tuple(int(c) for c in classes)
    if not wanted or len(set(wanted)) != len(wanted):
        raise ValueError(
            f"`classes` must be a non-empty sequence of distinct labels; got {classes}."
        )
    present = set(np.unique(source.labels).tolist())
    absent = [c for c in wanted if c not in present]
    if absent:
        raise ValueError(
            f"`classes` asks for labels {absent}, which no example of {source!r} "
            f"has; the labels present are {sorted(present)}."
        )
    return _ClassSubset(source, wanted)


# --------------------------------------------------------------------------------
# The original files


_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MNIST_URL = (
    "https://yann.lecun.com/exdb/mnist/ (mirror: "
    "https://ossci-datasets.s3.amazonaws.com/mnist/)"
)
_CIFAR_FOLDER = "cifar-10-batches-py"
_CIFAR_FILES = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

# IDX type codes (the third byte of the magic number) and their big-endian dtypes.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_maybe_gzip(path: Path) -> bytes:
    raw = path.read_bytes()
    # Decide by content, not by name: unpacked files are sometimes left with `.gz`.
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"{path} is a corrupt gzip file: {err}") from err


def _read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the format of the original MNIST files), gzip-compressed
    or not, checking its header.

    The header is the magic number `0x0000TTDD` (`TT` the element type, `DD` the
    number of dimensions) and `DD` big-endian 32-bit sizes; the elements follow.
    Returns a read-only array that shares the file's bytes.
    """
    path = Path(path)
    raw = _read_maybe_gzip(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{path} is not an IDX file: expected the magic number 0x0000TTDD with "
            "TT one of 08 09 0b 0c 0d 0e (the element type) and DD the number of "
            f"dimensions; got 0x{raw[:4].hex()}."
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise ValueError(
            f"{path} is truncated: its header announces {ndim} dimensions "
            f"({start} header bytes); the file has {len(raw)} bytes."
        )
    shape = struct.unpack(f">{ndim}I", raw[4:start])
    expected = start + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path} is truncated or corrupt: its header announces {dtype} data of "
            f"shape {shape}, {expected} bytes with the header; the file has "
            f"{len(raw)} bytes."
        )
    return np.frombuffer(raw, dtype, offset=start).reshape(shape)


def _find_mnist_file(folders: list[Path], stem: str) -> Path | None:
    # The published names, gzip-compressed or not; some unpackers turn the
    # "-idx" into ".idx".
    dotted = stem.replace("-idx", ".idx")
    for folder in folders:
        for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def _mnist_from_files(data_dir: Path, split: Split) -> ImageArrays | str:
    """The split, or (when a file is missing) what was missing."""
    folders = [data_dir, data_dir / "mnist"]
    image_stem, label_stem = _MNIST_FILES[split]
    image_path = _find_mnist_file(folders, image_stem)
    label_path = _find_mnist_file(folders, label_stem)
    if image_path is None or label_path is None:
        status = ", ".join(
            f"{stem}[.gz] {'found' if path else 'missing'}"
            for stem, path in ((image_stem, image_path), (label_stem, label_path))
        )
        return f"{status} (looked in {data_dir} and {data_dir / 'mnist'})"
    images = _read_idx(image_path)
    labels = _read_idx(label_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise ValueError(
            f"{image_path} should hold MNIST images: unsigned bytes of shape (n, 28, "
            f"28) (magic number 0x00000803); it holds {images.dtype} of shape "
            f"{images.shape}."
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise ValueError(
            f"{label_path} should hold MNIST labels: unsigned bytes of shape (n,) "
            f"(magic number 0x00000801); it holds {labels.dtype} of shape "
            f"{labels.shape}."
        )
    if labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{image_path} has {images.shape[0]} images but {label_path} has "
            f"{labels.shape[0]} labels."
        )
    if labels.size and labels.max() > 9:
        raise ValueError(
            f"{label_path} should hold digits 0-9; it holds {int(labels.max())}."
        )
    return ImageArrays(images[..., None], labels, name=f"mnist/{split}")


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays, nothing else: a pickle can run
    any code it names, and a CIFAR-10 batch needs only these."""

    _ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),  # protocol 5
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # bytes in protocol 2 pickles written by Python 3
    }

    def find_class(self, module: str, name: str) -> Any:
        # `numpy.core` is `numpy._core` since numpy 2; old pickles use the old name.
        if module.startswith("numpy.core."):
            module = "numpy._core." + module.removeprefix("numpy.core.")
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(
                f"expected only numpy arrays in a CIFAR-10 batch; it names "
                f"{module}.{name}."
            )
        return super().find_class(module, name)


def _read_cifar_batch(
    path: Path,
) -> tuple[UInt8[np.ndarray, "n 32 32 3"], Int[np.ndarray, " n"]]:
    try:
        with open(path, "rb") as f:
            batch = _NumpyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise ValueError(
            f"{path} is not a CIFAR-10 python batch (a pickled dict): {err}"
        ) from err
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        keys = sorted(batch) if isinstance(batch, dict) else type(batch).__name__
        raise ValueError(
            f"{path} should be a pickled dict with keys b'data' and b'labels'; got "
            f"{keys}."
        )
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ValueError(
            f"{path}: b'data' should be uint8 of shape (n, 3072); got {data.dtype} "
            f"of shape {data.shape}."
        )
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{path}: b'labels' should be {data.shape[0]} integers; got "
            f"{labels.dtype} of shape {labels.shape}."
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels should be 0-9; got {np.unique(labels)}.")
    # Each row is three 32x32 planes, R then G then B; to height-width-channel.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels


def _cifar10_from_files(data_dir: Path, split: Split) -> ImageArrays | str:
    """The split, or (when no file is found) what was missing."""
    candidates = [
        data_dir / _CIFAR_FOLDER,
        data_dir,
        data_dir / "cifar10" / _CIFAR_FOLDER,
        data_dir / "cifar10",
    ]
    names = _CIFAR_FILES[split]
    for folder in candidates:
        paths = [folder / name for name in names if (folder / name).is_file()]
        if paths:
            break
    else:
        folders = ", ".join(str(folder) for folder in candidates)
        return f"none of {', '.join(names)} (looked in {folders})"
    parts = [_read_cifar_batch(p) for p in paths]
    images = np.concatenate([p[0] for p in parts])  # one contiguous copy
    labels = np.concatenate([p[1] for p in parts])
    if len(paths) < len(names):
        missing = sorted(set(names) - {p.name for p in paths})
        full = 10_000 * len(names)
        warnings.warn(
            f"CIFAR-10 {split}: found {len(paths)} of {len(names)} training batches "
            f"({len(images):,} of {full:,} images) in {folder}: "
            f"{', '.join(p.name for p in paths)}; missing {', '.join(missing)}. "
            "Training on part of the data set.",
            stacklevel=3,
        )
    return ImageArrays(images, labels, name=f"cifar10/{split}")


# --------------------------------------------------------------------------------
# tensorflow-datasets


class _TfdsImages(ImageSource):
    """A prepared tensorflow-datasets split (ArrayRecord files), read with
    `tfds.data_source`: no TensorFlow needed."""

    def __init__(self, name: str, split: str, data_dir: str | None, tfds_source: Any):
        self.name = name
        self.split = split
        self.data_dir = data_dir
        self.tfds_source = tfds_source
        self._labels: Int[np.ndarray, " n"] | None = None

    def __len__(self) -> int:
        return len(self.tfds_source)

    def __getitem__(self, index: int) -> ImageRecord:
        record = self.tfds_source[index]
        return {"image": np.asarray(record["image"]), "label": int(record["label"])}

    def gather(self, indices: Int[np.ndarray, " b"]) -> ImageBatch:
        # One batched read of the ArrayRecord files, then decoding record by record.
        records = self.tfds_source.__getitems__([int(i) for i in indices])
        return {
            "image": np.stack([np.asarray(r["image"]) for r in records]),
            "label": np.array([int(r["label"]) for r in records], np.int64),
        }

    @property
    def labels(self) -> Int[np.ndarray, " n"]:
        if self._labels is None:
            import tensorflow_datasets as tfds

            # A second view of the same files that leaves the images encoded.
            undecoded: Any = tfds.data_source(
                self.name,
                split=self.split,
                data_dir=self.data_dir,
                download=False,
                decoders={"image": tfds.decode.SkipDecoding()},
            )
            labels = np.empty(len(undecoded), np.int64)
            for start in range(0, len(undecoded), 4096):
                keys = list(range(start, min(start + 4096, len(undecoded))))
                chunk = undecoded.__getitems__(keys)
                labels[start : start + len(keys)] = [int(r["label"]) for r in chunk]
            self._labels = labels
        return self._labels

    def __repr__(self) -> str:
        return f"TfdsImages(name={self.name!r}, split={self.split!r}, n={len(self)})"


def _from_tfds(name: str, split: Split, data_dir: Path | None) -> _TfdsImages | str:
    """The split, or (when it is not prepared) where it was looked for."""
    import tensorflow_datasets as tfds

    folder = None if data_dir is None else str(data_dir)
    builder: Any = tfds.builder(name, data_dir=folder)
    if not builder.is_prepared():
        return f"no prepared copy of {name!r} in {builder.data_dir}"
    try:
        source = builder.as_data_source(split=split)
    except NotImplementedError as err:
        raise ValueError(
            f"The tensorflow-datasets copy of {name!r} in {builder.data_dir} was "
            "prepared as TFRecord files, which cannot be read by index. Prepare it "
            "again as ArrayRecord files: "
            f'`tfds.builder("{name}", data_dir=...).download_and_prepare('
            'file_format="array_record")`.'
        ) from err
    return _TfdsImages(name, split, folder, source)


# --------------------------------------------------------------------------------
# The entry point


def _how_to_provide(name: DatasetName, split: Split) -> str:
    if name == "mnist":
        stems = _MNIST_FILES["train"] + _MNIST_FILES["test"]
        files = ", ".join(f"`{stem}.gz`" for stem in stems)
        originals = (
            f"put the original files {files} (gzip-compressed or not; this split "
            f"needs the {split} pair) in a folder and pass it as `data_dir`; they "
            f"are at {_MNIST_URL}."
        )
    else:
        files = ", ".join(f"`{n}`" for n in _CIFAR_FILES[split])
        originals = (
            f"download {_CIFAR_URL}, unpack it, and pass as `data_dir` the folder "
            f"that contains `{_CIFAR_FOLDER}/` (or that folder itself), which holds "
            f"{files}."
        )
    return (
        "Provide it in either of two ways:\n"
        f"  1. Original files: {originals}\n"
        "  2. tensorflow-datasets: with TensorFlow installed (`pip install "
        "'superdiff[tfds-prepare]'`, or `uv sync --extra tfds-prepare`), run once\n"
        "         import tensorflow_datasets as tfds\n"
        f'         tfds.builder("{name}", data_dir=DIR).download_and_prepare('
        'file_format="array_record")\n'
        "     and pass `data_dir=DIR` (reading it back needs no TensorFlow)."
    )


def load_images(
    name: DatasetName,
    split: Split = "train",
    data_dir: str | Path | None = None,
    source: Literal["auto", "files", "tfds"] = "auto",
    classes: Sequence[int] | None = None,
) -> ImageSource:
    """MNIST or CIFAR-10 as a grain data source of `ImageRecord`s:
    `{"image": uint8 (height, width, channels), "label": int}`, with images
    `(28, 28, 1)` for MNIST and `(32, 32, 3)` for CIFAR-10.

    **Arguments:**

    - `name`: `"mnist"` or `"cifar10"`.
    - `split`: `"train"` or `"test"`.
    - `data_dir`: the folder that holds the data, in either form below. `None`
        looks only for a tensorflow-datasets copy, in its default folder
        (`$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
    - `source`: where to read from:
        - `"files"`: the original files, in `data_dir` or `data_dir/<name>`.
            MNIST: `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
            `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, each gzip-compressed
            (`.gz`) or not. CIFAR-10: the "python version" batches
            `cifar-10-batches-py/data_batch_1` ... `data_batch_5` and `test_batch`;
            `data_dir` is the folder containing `cifar-10-batches-py/` or that
            folder itself. A partial copy works: the training batches present are
            used, with a warning that says how many it found. The whole split is read into memory once.
        - `"tfds"`: a copy prepared by tensorflow-datasets as ArrayRecord files,
            read by index with `tfds.data_source`, without TensorFlow.
        - `"auto"`: the original files if they are there, else tensorflow-datasets.
    - `classes`: if given, keep only the examples with these labels (see
        `select_classes`).

    **Raises:**

    `DataNotFoundError` (a `FileNotFoundError`) when the data set is in neither
    place; its message says where it looked and how to provide the data.
    `ValueError` when a file is there but corrupt.
    """
    if name not in _NAMES:
        raise ValueError(f"`name` must be one of {_NAMES}; got {name!r}.")
    if split not in _SPLITS:
        raise ValueError(f"`split` must be one of {_SPLITS}; got {split!r}.")
    if source not in _SOURCES:
        raise ValueError(f"`source` must be one of {_SOURCES}; got {source!r}.")
    folder = None if data_dir is None else Path(data_dir).expanduser()
    looked: list[str] = []
    found: ImageSource | None = None
    if source in ("auto", "files"):
        if folder is None:
            looked.append("original files: no `data_dir` given")
        else:
            from_files = _mnist_from_files if name == "mnist" else _cifar10_from_files
            result = from_files(folder, split)
            if isinstance(result, ImageSource):
                found = result
            else:
                exists = "" if folder.is_dir() else f" ({folder} does not exist)"
                looked.append(f"original files{exists}: {result}")
    if found is None and source in ("auto", "tfds"):
        result = _from_tfds(name, split, folder)
        if isinstance(result, ImageSource):
            found = result
        else:
            looked.append(f"tensorflow-datasets: {result}")
    if found is None:
        raise DataNotFoundError(
            f"No {name} {split!r} split found (source={source!r}). Looked for\n"
            + "".join(f"  - {place}\n" for place in looked)
            + _how_to_provide(name, split)
        )
    return found if classes is None else select_classes(found, classes)


# --------------------------------------------------------------------------------
# The pipeline


@functools.lru_cache(maxsize=4)
def _epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng((seed, epoch)).permutation(n)


class _Batcher:
    """Batch `index` of the pipeline: a function of the index alone (through the
    epoch's permutation), which is what makes the pipeline resumable."""

    def __init__(
        self,
        source: ImageSource,
        batch_size: int,
        batches_per_epoch: int,
        seed: int,
        shuffle: bool,
        horizontal_flip: bool = False,
    ):
        self.source = source
        self.batch_size = batch_size
        self.batches_per_epoch = batches_per_epoch
        self.seed = seed
        self.shuffle = shuffle
        self.horizontal_flip = horizontal_flip

    def __call__(self, index: int, _: Any) -> ImageBatch:
        epoch, position = divmod(index, self.batches_per_epoch)
        order = _epoch_order(len(self.source), self.seed, epoch, self.shuffle)
        start = position * self.batch_size
        batch = self.source.gather(order[start : start + self.batch_size])
        if self.horizontal_flip:
            # Each example mirrored left-right with probability 1/2, drawn from
            # (seed, batch index) alone, so a resumed pipeline flips the same ones.
            images = batch["image"]
            rng = np.random.default_rng((self.seed, index, 1))
            flip = rng.random(images.shape[0]) < 0.5
            mirrored = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
            batch = ImageBatch(image=mirrored, label=batch["label"])
        return batch


def _scale(
    batch: ImageBatch,
) -> tuple[Float32[np.ndarray, "b h w c"], Int32[np.ndarray, " b"]]:
    # 0 -> -1 and 255 -> 1 exactly: 255 / 127.5 = 2 is exact in float32.
    images = batch["image"].astype(np.float32) / np.float32(127.5) - np.float32(1)
    return images, batch["label"].astype(np.int32)


def _images_only(
    batch: tuple[Float32[np.ndarray, "b h w c"], Int32[np.ndarray, " b"]],
) -> Float32[np.ndarray, "b h w c"]:
    return batch[0]


def image_batches(
    source: ImageSource,
    batch_size: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    drop_remainder: bool = True,
    with_labels: bool = True,
    horizontal_flip: bool = False,
    read_options: grain.ReadOptions | None = None,
) -> grain.IterDataset:
    """Batches of `source` for training or evaluation, as a grain pipeline:
    shuffle, batch, repeat, scale to $[-1, 1]$.

    Each element is `(images, labels)`: `float32` images of shape
    `(batch_size, height, width, channels)` with pixel values $v \\mapsto v / 127.5
    - 1$ (so 0 becomes -1 and 255 becomes 1), and `int32` labels of shape
    `(batch_size,)`; with `with_labels=False`, the images alone.

    Every epoch is a new permutation of the examples, drawn from `(seed, epoch)`,
    cut into batches: each epoch shows every example once (except, with
    `drop_remainder`, the `len(source) % batch_size` left over), and no batch
    straddles two epochs. A batch is read with one `source.gather` call.

    Batch $k$ is a function of `(seed, k)` alone, so the pipeline resumes exactly:
    `it = iter(pipeline)`; `state = it.get_state()` (a small JSON-serialisable
    dict); later, `it = iter(pipeline)`; `it.set_state(state)`, and `it`
    continues with the very batches the first iterator would have produced.

    **Arguments:**

    - `source`: an `ImageSource`, e.g. from `load_images`.
    - `batch_size`: examples per batch.
    - `seed`: the shuffle's seed, a non-negative integer.
    - `shuffle`: `False` keeps the source's order (for evaluation).
    - `num_epochs`: how many passes; `None` repeats forever (for training).
    - `drop_remainder`: drop each epoch's last, incomplete batch, so that all
        batches have one shape (one compilation of the training step).
    - `with_labels`: yield `(images, labels)`, or `False` for the images alone.
    - `horizontal_flip`: a training augmentation: mirror each example left-right
        with probability 1/2, independently per example, drawn from `(seed, k)` for
        batch $k$ (so resuming replays the same flips, and each epoch flips anew).
    - `read_options`: grain's `ReadOptions` for the background threads that
        prepare batches ahead; by default 2 threads and 8 batches ahead.
    """
    n = len(source)
    if n == 0:
        raise ValueError(f"The data set {source!r} is empty.")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be positive; got {batch_size}.")
    if drop_remainder and batch_size > n:
        raise ValueError(
            f"`batch_size` {batch_size} is larger than the data set ({n} examples), "
            "so with `drop_remainder=True` there would be no batch."
        )
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"`num_epochs` must be positive or None; got {num_epochs}.")
    if seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer; got {seed}.")
    batches_per_epoch = n // batch_size if drop_remainder else math.ceil(n / batch_size)
    batcher = _Batcher(
        source, batch_size, batches_per_epoch, seed, shuffle, horizontal_flip
    )
    dataset = (
        grain.MapDataset.range(batches_per_epoch)
        .repeat(num_epochs)
        .map_with_index(batcher)
        .map(_scale)
    )
    if not with_labels:
        dataset = dataset.map(_images_only)
    if read_options is None:
        read_options = grain.ReadOptions(num_threads=2, prefetch_buffer_size=8)
    return dataset.to_iter_dataset(read_options)
