"""Checkpoints: any PyTree of arrays, written atomically with a checksum, verified
and loaded bit-identical onto the template's devices; `fit`'s folder of the last
few checkpoints and its background writer.

A checkpoint file is

    b"SDCKPT\\x00\\x02"                  8 bytes, the signature (format 2)
    header length                      8 bytes, little-endian
    SHA-256 of the header              32 bytes
    header                             JSON: metadata, payload length and SHA-256,
                                       the path/dtype/shape of every leaf
    payload                            the leaves, as `eqx.tree_serialise_leaves`

Format 1 (no signature, no checksum: the header length, the JSON metadata, the
payload) is still read, with a warning that it cannot be verified.
"""

import errno
import hashlib
import io
import json
import os
import re
import secrets
import threading
import warnings
from pathlib import Path
from typing import Any, TypeVar

import equinox as eqx
import jax
import jax.tree_util as jtu
import numpy as np


T = TypeVar("T")

_MAGIC = b"SDCKPT\x00\x02"
_PREFIX = len(_MAGIC) + 8 + 32
_STEP_FILE = re.compile(r"^step-(\d+)\.ckpt$")
# Damage that a fall back to an older checkpoint gets round; a different model
# configuration, a missing permission or file is the caller's to fix.
DAMAGE = ("empty", "truncated", "damaged", "not a checkpoint")


class CheckpointError(Exception):
    """A checkpoint that cannot be written or read, in one line naming the file and
    the cause. `path` is the file (or folder); `kind` is one of "missing", "empty",
    "truncated", "damaged", "not a checkpoint", "mismatch" (a different model
    configuration), "no space", "permission", "io"."""

    def __init__(self, message: str, path: str | os.PathLike, kind: str):
        super().__init__(message)
        self.path = Path(path)
        self.kind = kind


def _os_error(err: OSError, path: Path, doing: str, kept: str = "") -> CheckpointError:
    """A one-line `CheckpointError` for an `OSError` raised while `doing` (e.g.
    "write the checkpoint") at `path`; `kept` adds what survived."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return CheckpointError(
            f"Could not {doing} {path}: no space left on the device{kept}.",
            path,
            "no space",
        )
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return CheckpointError(
            f"Could not {doing} {path}: permission denied.", path, "permission"
        )
    return CheckpointError(
        f"Could not {doing} {path}: {err.strerror or err}.", path, "io"
    )


def _describe(x: Any) -> str | None:
    """What `eqx.tree_serialise_leaves` stores for a leaf: dtype and shape for an
    array, the type for a Python scalar, nothing (None) for anything else."""
    if isinstance(x, (jax.Array, jax.ShapeDtypeStruct, np.ndarray, np.generic)):
        return f"{np.dtype(x.dtype).name}{list(x.shape)}"
    if eqx.is_array_like(x):
        return type(x).__name__
    return None


def _leaf_table(tree: Any) -> list[list[str]]:
    return [
        [jtu.keystr(path), desc]
        for path, leaf in jtu.tree_flatten_with_path(tree)[0]
        if (desc := _describe(leaf)) is not None
    ]


def _encode(tree: Any, metadata: dict | None) -> bytes:
    """The bytes of a checkpoint of `tree` (its arrays already on the host)."""
    payload = io.BytesIO()
    eqx.tree_serialise_leaves(payload, tree)
    data = payload.getvalue()
    header = json.dumps(
        {
            "format": 2,
            "metadata": metadata or {},
            "payload_bytes": len(data),
            "payload_sha256": hashlib.sha256(data).hexdigest(),
            "leaves": _leaf_table(tree),
        }
    ).encode()
    prefix = _MAGIC + len(header).to_bytes(8, "little")
    return prefix + hashlib.sha256(header).digest() + header + data


def _unique_tmp(path: Path) -> tuple[int, Path]:
    """A new temporary file beside `path`, created with mode 0o666 less the umask
    (as `open` would; `mkstemp` would make it 0o600)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def _write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically: to a temporary file in the same folder,
    flushed and fsynced, then renamed over `path`; an `OSError` becomes a
    `CheckpointError` naming the cause, and the temporary file is removed."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _unique_tmp(path)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_folder(path.parent)
    except OSError as err:
        kept = " (any earlier checkpoint there is kept)"
        raise _os_error(err, path, "write the checkpoint", kept) from err
    finally:
        if tmp is not None:
            try:
                os.remove(tmp)
            except OSError:
                pass


def _fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (where the platform allows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(
    path: str | os.PathLike, tree: Any, metadata: dict | None = None
) -> None:
    """Write `tree` (any PyTree; its arrays are saved, the rest is structure) to the
    file `path`, atomically: to a temporary file in the same folder, flushed and
    fsynced, then renamed over `path`. A crash leaves the old checkpoint or the new
    one, never half of one. `metadata` (JSON-serialisable) is stored in the header,
    with the SHA-256 of the arrays that `load_checkpoint` verifies.

    Arrays on devices (sharded or replicated `jax.Array`s) are gathered to the host
    first. A failure (no space left, permission denied, ...) raises a
    `CheckpointError` naming the file and the cause.
    """
    path = Path(path)
    _write_bytes(path, _encode(jax.device_get(tree), metadata))


def _read(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError as err:
        raise CheckpointError(f"No checkpoint at {path}.", path, "missing") from err
    except IsADirectoryError as err:
        raise CheckpointError(
            f"{path} is a folder, not a checkpoint file.", path, "not a checkpoint"
        ) from err
    except OSError as err:
        raise _os_error(err, path, "read the checkpoint") from err


def _legacy(data: bytes, path: Path) -> tuple[dict, bytes] | None:
    """The metadata and payload of a format-1 checkpoint, or None if `data` is not
    one."""
    size = int.from_bytes(data[:8], "little")
    if not (2 <= size <= len(data) - 8 and data[8:9] == b"{"):
        return None
    try:
        metadata = json.loads(data[8 : 8 + size])
    except ValueError:
        return None
    if not isinstance(metadata, dict):
        return None
    warnings.warn(
        f"The checkpoint {path} was written by an earlier superdiff, without a "
        "checksum: it is loaded unverified.",
        stacklevel=3,
    )
    return metadata, data[8 + size :]


def _verified(path: Path) -> tuple[dict | None, dict, bytes]:
    """The header (None for format 1), metadata and payload of the checkpoint file
    `path`, checked against its length and checksums."""
    data = _read(path)
    if not data:
        raise CheckpointError(
            f"The checkpoint {path} is empty (0 bytes): its write never finished.",
            path,
            "empty",
        )
    if not data.startswith(_MAGIC):
        if _MAGIC.startswith(data):
            raise CheckpointError(
                f"The checkpoint {path} is truncated: {len(data)} bytes, less than "
                "its header.",
                path,
                "truncated",
            )
        legacy = _legacy(data, path)
        if legacy is not None:
            return None, *legacy
        raise CheckpointError(
            f"{path} is not a superdiff checkpoint: it does not start with the "
            "checkpoint signature (another file, or its first bytes overwritten).",
            path,
            "not a checkpoint",
        )
    if len(data) < _PREFIX:
        raise CheckpointError(
            f"The checkpoint {path} is truncated: {len(data)} bytes, less than its "
            "header.",
            path,
            "truncated",
        )
    size = int.from_bytes(data[len(_MAGIC) : len(_MAGIC) + 8], "little")
    digest = data[len(_MAGIC) + 8 : _PREFIX]
    if _PREFIX + size > len(data):
        raise CheckpointError(
            f"The checkpoint {path} is truncated (or its header damaged): "
            f"{len(data)} bytes, less than its {_PREFIX + size}-byte header.",
            path,
            "truncated",
        )
    raw = data[_PREFIX : _PREFIX + size]
    if hashlib.sha256(raw).digest() != digest:
        raise CheckpointError(
            f"The checkpoint {path} is damaged: its header does not match its "
            "SHA-256 checksum.",
            path,
            "damaged",
        )
    header = json.loads(raw)
    payload = data[_PREFIX + size :]
    expected = header["payload_bytes"]
    if len(payload) < expected:
        raise CheckpointError(
            f"The checkpoint {path} is truncated: {len(data)} bytes of the "
            f"{_PREFIX + size + expected} it was written with.",
            path,
            "truncated",
        )
    if (
        len(payload) > expected
        or hashlib.sha256(payload).hexdigest() != header["payload_sha256"]
    ):
        raise CheckpointError(
            f"The checkpoint {path} is damaged: its arrays do not match their "
            "SHA-256 checksum.",
            path,
            "damaged",
        )
    return header, header["metadata"], payload


def _check_template(header: dict, like: Any, path: Path) -> None:
    """Refuse a template whose leaves differ from the checkpoint's, naming the
    first that differs."""
    saved, wanted = header["leaves"], _leaf_table(like)
    for (p, a), (q, b) in zip(saved, wanted, strict=False):
        if (p, a) != (q, b):
            where = p if p == q else f"{p} (template: {q})"
            raise CheckpointError(
                f"The checkpoint {path} holds a different model configuration: at "
                f"{where} it has {a}, the template {b}.",
                path,
                "mismatch",
            )
    if len(saved) != len(wanted):
        raise CheckpointError(
            f"The checkpoint {path} holds a different model configuration: "
            f"{len(saved)} arrays, the template {len(wanted)}.",
            path,
            "mismatch",
        )


def _load_leaf(f: Any, x: Any) -> Any:
    """Read one leaf, placing an array as the template leaf `x` is placed (its
    sharding), so a checkpoint loads onto any number of devices."""
    if isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
        value = np.load(f)
        sharding = getattr(x, "sharding", None)
        if value.shape != x.shape or value.dtype != x.dtype:
            return value  # eqx reports the difference
        return jax.device_put(value, sharding)
    return eqx.default_deserialise_filter_spec(f, x)


def _decode(header: dict | None, payload: bytes, like: T, path: Path) -> T:
    if header is not None:
        _check_template(header, like, path)
    f = io.BytesIO(payload)
    try:
        tree = eqx.tree_deserialise_leaves(f, like, filter_spec=_load_leaf)
    except Exception as err:
        cause = err.__cause__ or err
        raise CheckpointError(
            f"The checkpoint {path} does not match the template (a different model "
            f"configuration?): {str(cause).splitlines()[0] if str(cause) else cause!r}",
            path,
            "mismatch",
        ) from err
    if f.tell() != len(payload):
        raise CheckpointError(
            f"The checkpoint {path} holds a different model configuration: more "
            "arrays than the template.",
            path,
            "mismatch",
        )
    return tree


def checkpoint_steps(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """The `(step, file)` of the checkpoints `fit` wrote into `folder`, newest
    first."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in folder.iterdir()
        if (m := _STEP_FILE.match(p.name)) is not None
    ]
    return sorted(found, reverse=True)


def step_file(folder: str | os.PathLike, step: int) -> Path:
    return Path(folder) / f"step-{step:08d}.ckpt"


def load_checkpoint(path: str | os.PathLike, like: T) -> tuple[T, dict]:
    """Load a checkpoint into the structure of `like` (a PyTree of the same shapes,
    e.g. a freshly initialised one). Returns the tree and the metadata.

    `path` is a file written by `save_checkpoint`, or a folder of checkpoints
    written by `fit` (then the newest intact one is loaded, with a warning for each
    damaged one passed over). The file's length and SHA-256 checksums are verified
    before anything is loaded. Each array goes where `like`'s leaf is: onto its
    sharding if it is a `jax.Array` (e.g. replicated over a mesh of another size
    than the one that saved it). Any failure raises a `CheckpointError` that names
    the file and the cause: missing, empty, truncated, damaged, not a checkpoint,
    or a different model configuration ("mismatch").
    """
    path = Path(path)
    if path.is_dir():
        return _load_newest(path, like)
    header, metadata, payload = _verified(path)
    return _decode(header, payload, like, path), metadata


def _load_newest(folder: Path, like: T) -> tuple[T, dict]:
    candidates = checkpoint_steps(folder)
    if not candidates:
        raise CheckpointError(
            f"No checkpoint in the folder {folder} (no step-*.ckpt file).",
            folder,
            "missing",
        )
    damaged: list[str] = []
    for i, (_, file) in enumerate(candidates):
        try:
            tree, metadata = load_checkpoint(file, like)
        except CheckpointError as err:
            if err.kind not in DAMAGE:
                raise
            damaged.append(str(err))
            after = (
                f"falling back to {candidates[i + 1][1].name}"
                if i + 1 < len(candidates)
                else "no older checkpoint is left"
            )
            warnings.warn(f"{err} Passing it over: {after}.", stacklevel=3)
            continue
        return tree, metadata
    raise CheckpointError(
        f"No intact checkpoint in the folder {folder}: all {len(damaged)} are "
        "damaged (move them away to start afresh).",
        folder,
        "damaged",
    )


def check_writable(folder: str | os.PathLike, what: str) -> None:
    """Create `folder` if needed and write (then remove) a small temporary file in
    it, so that a folder training cannot write to fails before the first step."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = _unique_tmp(folder / "write-test")
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
            os.remove(tmp)
    except OSError as err:
        raise _os_error(err, folder, f"write to the {what} folder") from err


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files (`.*.tmp`) that a killed write left in `folder`;
    returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


class CheckpointWriter:
    """`fit`'s checkpoints: one file per step (`step-00000050.ckpt`) in a folder,
    the last `keep` kept, each written by a background thread so that training goes
    on meanwhile. At most one write is in flight; `save` waits for the previous
    one, and an error in the thread is raised in the caller's thread at the next
    `save` or `wait`.

    If training stops with an exception, the write in flight still completes (the
    thread is not a daemon), and a later writer of the same folder (a rerun of
    `fit` in the same process) waits for it before touching the folder.
    """

    _in_flight: dict[Path, "CheckpointWriter"] = {}
    _lock = threading.Lock()

    def __init__(self, folder: str | os.PathLike, keep: int = 3):
        if keep < 1:
            raise ValueError(f"`keep_checkpoints` must be positive; got {keep}.")
        self.folder = Path(folder)
        self.keep = keep
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        with CheckpointWriter._lock:
            earlier = CheckpointWriter._in_flight.pop(self.folder.absolute(), None)
        if earlier is not None and earlier._thread is not None:
            earlier._thread.join()
            if earlier._error is not None:
                warnings.warn(
                    f"The last checkpoint write of an interrupted run failed: "
                    f"{earlier._error}",
                    stacklevel=3,
                )

    def save(self, step: int, tree: Any, metadata: dict) -> None:
        """Copy `tree`'s arrays to the host now, and write them in the background."""
        self.wait()
        host = jax.device_get(tree)  # the step loop goes on with the device copy
        self._error = None

        def job():
            try:
                _write_bytes(step_file(self.folder, step), _encode(host, metadata))
                for _, old in checkpoint_steps(self.folder)[self.keep :]:
                    old.unlink(missing_ok=True)
            except BaseException as err:  # raised again by `wait`
                self._error = err

        self._thread = threading.Thread(target=job, name=f"checkpoint {step}")
        self._thread.start()
        with CheckpointWriter._lock:
            CheckpointWriter._in_flight[self.folder.absolute()] = self

    def wait(self) -> None:
        """Wait for the write in flight; raise its error, if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        err, self._error = self._error, None
        if err is not None:
            raise err
