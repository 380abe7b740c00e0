"""Read the tensors of a TorchScript archive (`torch.jit.save`) without torch.

The archive is a zip: `<root>/data.pkl` pickles the module tree, whose tensors
point by a persistent id at raw little-endian storages `<root>/data/<key>`. A
restricted unpickler rebuilds those tensors as NumPy arrays and every scripted
module as a plain attribute dict; it resolves no other class, so no code from the
archive runs.
"""

import collections
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


_STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


class _ScriptModule:
    """A scripted module as unpickled: its attributes, children and tensors. The
    pickle makes each through `cls.__new__(cls)`, so every scripted type gets a
    subclass of its own (see `find_class`)."""

    type_name: str = "module"
    state: dict[str, Any] = {}

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict):
            raise pickle.UnpicklingError(
                f"Expected the state of {self.type_name} to be a dict; got "
                f"{type(state).__name__}."
            )
        self.state = state


def _rebuild_tensor(
    storage: np.ndarray,
    offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    *_: Any,
) -> np.ndarray:
    if not size:
        return storage[offset].copy()
    view = np.lib.stride_tricks.as_strided(
        storage[offset:],
        shape=size,
        strides=tuple(s * storage.itemsize for s in stride),
        writeable=False,
    )
    return np.ascontiguousarray(view)


def _identity_list(values: Any) -> list:
    return list(values)


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: Any, read_storage: Callable[[str, str], np.ndarray]):
        super().__init__(file)
        self._read_storage = read_storage

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return lambda data, requires_grad, hooks: data
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        if module == "torch.jit._pickle" and name.startswith("build_"):
            return _identity_list
        if module == "torch.jit._pickle" and name == "restore_type_tag":
            return lambda value, type_str: value
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module.startswith("__torch__"):
            return type(name, (_ScriptModule,), {"type_name": f"{module}.{name}"})
        raise pickle.UnpicklingError(
            f"A TorchScript archive of tensors and modules was expected; it refers "
            f"to {module}.{name}, which this reader does not rebuild."
        )

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and len(pid) >= 3 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"Unknown persistent id {pid!r}.")
        dtype = pid[1]
        if dtype not in _STORAGE_DTYPES:
            raise pickle.UnpicklingError(
                f"Unsupported storage type {dtype!r}; expected one of "
                f"{sorted(_STORAGE_DTYPES)}."
            )
        return self._read_storage(str(pid[2]), _STORAGE_DTYPES[dtype])


def _flatten(node: Any, prefix: str, out: dict[str, np.ndarray]) -> None:
    if isinstance(node, np.ndarray):
        out[prefix] = node
    elif isinstance(node, _ScriptModule):
        for key, value in node.state.items():
            _flatten(value, f"{prefix}.{key}" if prefix else key, out)


def read_torchscript(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a TorchScript archive, keyed by their dotted attribute path
    from the root module (e.g. `"net.layers.conv.weight"`), as NumPy arrays.

    **Raises:** `ValueError` if the file is not a zip with a `data.pkl`;
    `pickle.UnpicklingError` if the pickle refers to anything other than tensors
    and scripted modules.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(f"Expected a TorchScript archive (a zip file); {path} is not.")
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError(
                f"Expected one `<root>/data.pkl` in the TorchScript archive {path}; "
                f"found {pickles or 'none'}."
            )
        root = pickles[0][: -len("data.pkl")]
        storages: dict[str, np.ndarray] = {}

        def read_storage(key: str, dtype: str) -> np.ndarray:
            if key not in storages:
                raw = archive.read(f"{root}data/{key}")
                storages[key] = np.frombuffer(raw, dtype=dtype)
            return storages[key]

        with archive.open(pickles[0]) as file:
            tree = _Unpickler(file, read_storage).load()
    tensors: dict[str, np.ndarray] = {}
    _flatten(tree, "", tensors)
    return tensors
