"""Checkpoints: any PyTree of arrays, written atomically, loaded bit-identical."""

import json
import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import equinox as eqx


T = TypeVar("T")


def save_checkpoint(
    path: str | os.PathLike, tree: Any, metadata: dict | None = None
) -> None:
    """Write `tree` (any PyTree; its arrays are saved, the rest is structure) to
    `path`, atomically: to a temporary file in the same folder, flushed and fsynced,
    then renamed over `path`. A crash leaves the old checkpoint or the new one, never
    half of one. `metadata` (JSON-serialisable) is stored in the header.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = json.dumps(metadata or {}).encode()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(len(header).to_bytes(8, "little"))
            f.write(header)
            eqx.tree_serialise_leaves(f, tree)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load_checkpoint(path: str | os.PathLike, like: T) -> tuple[T, dict]:
    """Load a checkpoint written by `save_checkpoint` into the structure of `like`
    (a PyTree of the same shapes, e.g. a freshly initialised one). Returns the tree
    and the metadata."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}.")
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        metadata = json.loads(f.read(size))
        try:
            tree = eqx.tree_deserialise_leaves(f, like)
        except Exception as err:
            raise ValueError(
                f"The checkpoint {path} does not match the expected structure (a "
                f"different model configuration?): {err}"
            ) from err
    return tree, metadata
