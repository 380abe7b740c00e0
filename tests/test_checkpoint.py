"""Checkpoints that can be trusted: every damaged, foreign or unwritable file is
refused with a one-line `CheckpointError` naming the file and the cause, `fit`
falls back past damaged checkpoints, and restores go onto any number of devices."""

import errno
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import superdiff as sd
from superdiff.train import _checkpoint


def _tree():
    return {
        "b": jnp.zeros(3),
        "n": jnp.asarray(5),
        "w": jnp.arange(256, dtype=jnp.float32).reshape(16, 16) / 7,
    }


def _saved(tmp_path: Path) -> Path:
    path = tmp_path / "ckpt.ckpt"
    sd.train.save_checkpoint(path, _tree(), {"note": "x"})
    return path


def _refused(path: Path, kind: str, words: str) -> sd.train.CheckpointError:
    with pytest.raises(sd.train.CheckpointError) as info:
        sd.train.load_checkpoint(path, _tree())
    err = info.value
    message = str(err)
    assert err.kind == kind, message
    assert str(path) in message and words in message, message
    assert "\n" not in message
    return err


def _equal(a, b) -> bool:
    la = jax.tree.leaves(eqx.filter(a, eqx.is_array))
    lb = jax.tree.leaves(eqx.filter(b, eqx.is_array))
    return len(la) == len(lb) and all(
        np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(la, lb, strict=True)
    )


def test_roundtrip_and_file_mode(tmp_path):
    old = os.umask(0o022)
    try:
        path = _saved(tmp_path)
    finally:
        os.umask(old)
    tree, meta = sd.train.load_checkpoint(path, _tree())
    assert meta == {"note": "x"} and _equal(tree, _tree())
    assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0o600
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-500] + bytes(x ^ 0xFF for x in b[-500:-460]) + b[-460:],
        lambda b: b[:-400] + np.float32(1e6).tobytes() + b[-396:],
    ],
    ids=["40 bytes flipped", "a weight set to 1e6"],
)
def test_changed_weights_are_refused(tmp_path, damage):
    path = _saved(tmp_path)
    path.write_bytes(damage(path.read_bytes()))  # inside "w", the last array
    _refused(path, "damaged", "is damaged: its arrays do not match their SHA-256")


def test_empty_file_is_refused(tmp_path):
    path = _saved(tmp_path)
    path.write_bytes(b"")
    _refused(path, "empty", "is empty (0 bytes)")


def test_random_bytes_are_not_a_checkpoint(tmp_path):
    path = tmp_path / "noise.ckpt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    _refused(path, "not a checkpoint", "is not a superdiff checkpoint")


def test_overwritten_header_is_refused(tmp_path):
    path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(np.random.default_rng(1).bytes(64) + data[64:])
    _refused(path, "not a checkpoint", "is not a superdiff checkpoint")
    # The signature intact, the JSON header changed: its checksum catches it.
    at = data.index(b'"note"')
    path.write_bytes(data[:at] + b'"nope"' + data[at + 6 :])
    _refused(path, "damaged", "is damaged: its header does not match its SHA-256")


def test_truncated_file_is_refused(tmp_path):
    path = _saved(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    err = _refused(path, "truncated", "is truncated")
    assert f"{len(data) // 2} bytes of the {len(data)}" in str(err)
    path.write_bytes(data[:20])
    _refused(path, "truncated", "is truncated")


def test_a_different_configuration_is_named_as_such(tmp_path):
    path = _saved(tmp_path)
    other = dict(_tree(), w=jnp.zeros((8, 16), jnp.float32))
    with pytest.raises(sd.train.CheckpointError) as info:
        sd.train.load_checkpoint(path, other)
    assert info.value.kind == "mismatch"
    assert str(info.value) == (
        f"The checkpoint {path} holds a different model configuration: at ['w'] it "
        "has float32[16, 16], the template float32[8, 16]."
    )
    with pytest.raises(sd.train.CheckpointError, match="float16"):
        sd.train.load_checkpoint(path, dict(_tree(), b=jnp.zeros(3, jnp.float16)))
    with pytest.raises(sd.train.CheckpointError, match="3 arrays, the template 4"):
        sd.train.load_checkpoint(path, dict(_tree(), z=jnp.zeros(1)))


def test_legacy_format_loads_with_a_warning(tmp_path):
    import io

    payload = io.BytesIO()
    eqx.tree_serialise_leaves(payload, _tree())
    header = json.dumps({"step": 3}).encode()
    path = tmp_path / "old.eqx"
    path.write_bytes(len(header).to_bytes(8, "little") + header + payload.getvalue())
    with pytest.warns(UserWarning, match="without a checksum"):
        tree, meta = sd.train.load_checkpoint(path, _tree())
    assert meta == {"step": 3} and _equal(tree, _tree())


def _no_space(monkeypatch, when=lambda: True):
    real = os.fsync

    def fsync(fd):  # a file's, not a folder's
        if stat.S_ISREG(os.fstat(fd).st_mode) and when():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(_checkpoint.os, "fsync", fsync)


def test_disk_full_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = _saved(tmp_path)
    before = path.read_bytes()
    _no_space(monkeypatch)
    with pytest.raises(sd.train.CheckpointError) as info:
        sd.train.save_checkpoint(path, dict(_tree(), b=jnp.ones(3)))
    assert info.value.kind == "no space"
    assert str(info.value) == (
        f"Could not write the checkpoint {path}: no space left on the device (any "
        "earlier checkpoint there is kept)."
    )
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left


def _forbid(monkeypatch):
    def refuse(path):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(_checkpoint, "_unique_tmp", refuse)


def test_permission_denied_is_named(tmp_path, monkeypatch):
    _forbid(monkeypatch)
    path = tmp_path / "ckpt.ckpt"
    with pytest.raises(sd.train.CheckpointError) as info:
        sd.train.save_checkpoint(path, _tree())
    assert info.value.kind == "permission"
    assert (
        str(info.value) == f"Could not write the checkpoint {path}: permission denied."
    )


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores chmod"
)
def test_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(sd.train.CheckpointError, match="permission denied"):
            sd.train.save_checkpoint(folder / "c.ckpt", _tree())
    finally:
        folder.chmod(0o700)


# Training runs: a small MLP on two moons, as in test_training.py.


def _setup(seed=0):
    sde = sd.VPSDE()
    net = sd.nn.MLP(2, width=16, depth=1, key=jax.random.key(seed))
    optimizer = sd.train.make_optimizer(1e-3, warmup_steps=5)
    state = sd.train.init_train_state(net, optimizer, seed=seed)
    data = sd.data.two_moons(256, key=jax.random.key(1))
    loss_fn = sd.train.dsm_objective(sde)
    return state, sd.train.ArraySampler(data, 32), loss_fn, optimizer


def _fit(state, num_steps, **kwargs):
    _, sampler, loss_fn, optimizer = _setup()
    kwargs.setdefault("progress", False)
    return sd.train.fit(state, sampler, loss_fn, optimizer, num_steps, **kwargs)


def test_unwritable_folders_fail_before_the_first_step(tmp_path, monkeypatch):
    state, sampler, loss_fn, optimizer = _setup()
    traced = []
    counting = lambda model, batch, key: traced.append(1) or loss_fn(model, batch, key)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(sd.train.CheckpointError) as info:
        sd.train.fit(
            state, sampler, counting, optimizer, 5, log_path=blocker / "log.jsonl",
            progress=False,
        )  # fmt: skip
    assert str(blocker) in str(info.value) and "metrics log folder" in str(info.value)
    _forbid(monkeypatch)
    with pytest.raises(sd.train.CheckpointError) as info:
        sd.train.fit(
            state, sampler, counting, optimizer, 5, checkpoint_path=tmp_path / "run",
            progress=False,
        )  # fmt: skip
    assert str(info.value) == (
        f"Could not write to the checkpoint folder {tmp_path / 'run'}: permission "
        "denied."
    )
    assert traced == []  # no step was taken
    legacy = tmp_path / "old.eqx"
    legacy.write_bytes(b"x")
    with pytest.raises(sd.train.CheckpointError, match="is a file"):
        _fit(state, 5, checkpoint_path=legacy)


def test_stale_temporaries_are_removed(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / ".step-00000010.ckpt.0123abcd.tmp").write_bytes(b"")
    _fit(_setup()[0], 0, checkpoint_path=folder)
    assert list(folder.iterdir()) == []


def _read_log(path: Path) -> list[dict]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "steps_per_s"} for r in records]


def test_resume_falls_back_past_a_damaged_checkpoint(tmp_path):
    state0 = _setup()[0]
    straight, _ = _fit(state0, 40, log_path=tmp_path / "straight.jsonl", log_every=5)
    folder, log = tmp_path / "run", tmp_path / "run.jsonl"
    kwargs: dict[str, Any] = dict(
        checkpoint_path=folder, checkpoint_every=10, log_path=log, log_every=5
    )
    _fit(state0, 30, keep_checkpoints=2, **kwargs)
    assert [p.name for p in sorted(folder.iterdir())] == [
        "step-00000020.ckpt",
        "step-00000030.ckpt",
    ]  # the last two kept
    newest = folder / "step-00000030.ckpt"
    data = newest.read_bytes()
    newest.write_bytes(data[:-300] + bytes(40) + data[-260:])
    with pytest.warns(UserWarning, match="falling back to step-00000020.ckpt") as rec:
        resumed, _ = _fit(_setup(seed=5)[0], 40, **kwargs)
    assert f"{newest} is damaged" in str(rec[0].message)
    assert _equal(resumed, straight)
    assert _read_log(log) == _read_log(tmp_path / "straight.jsonl")
    assert (folder / "step-00000030.ckpt.damaged").is_file()
    assert int(sd.train.load_checkpoint(folder, state0)[0].step) == 40


def test_a_failed_background_write_is_raised_and_resume_is_exact(tmp_path, monkeypatch):
    state0 = _setup()[0]
    straight, _ = _fit(state0, 20)
    folder = tmp_path / "run"
    writes = []

    def full_at_second_write():
        writes.append(1)
        return len(writes) == 2

    _no_space(monkeypatch, full_at_second_write)
    with pytest.raises(sd.train.CheckpointError, match="no space left") as info:
        _fit(state0, 20, checkpoint_path=folder, checkpoint_every=10)
    assert info.value.path == folder / "step-00000020.ckpt"
    assert sorted(p.name for p in folder.iterdir()) == ["step-00000010.ckpt"]
    monkeypatch.undo()  # space again
    resumed, _ = _fit(_setup(seed=5)[0], 20, checkpoint_path=folder)
    assert _equal(resumed, straight)


def _run(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


_RESHARD = """
    import jax
    jax.config.update("jax_num_cpu_devices", 4)
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import superdiff as sd

    def mesh(n):
        return Mesh(np.array(jax.devices()[:n]), ("d",))

    def tree(n, value):
        rep, split = NamedSharding(mesh(n), P()), NamedSharding(mesh(n), P("d"))
        w = np.arange(32, dtype=np.float32).reshape(4, 8) * value
        return {
            "w": jax.device_put(w, rep),
            "rows": jax.device_put(w + 1, split),
            "step": jax.device_put(np.int32(7 * value), rep),
        }

    saved = tree(4, 1.5)
    sd.train.save_checkpoint(PATH, saved)
    for n in (2, 1):
        like = tree(n, 0)
        out, _ = sd.train.load_checkpoint(PATH, like)
        for k in saved:
            assert np.array_equal(np.asarray(out[k]), np.asarray(saved[k])), k
            assert out[k].sharding == like[k].sharding, (k, out[k].sharding)
    print("ok")
"""


def test_restores_onto_another_number_of_devices(tmp_path):
    code = _RESHARD.replace("PATH", repr(str(tmp_path / "c.ckpt")))
    done = _run(code, JAX_PLATFORMS="cpu")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


_TRAIN = """
    import sys
    import jax
    import superdiff as sd

    sde = sd.VPSDE()
    net = sd.nn.MLP(2, width=16, depth=1, key=jax.random.key(0))
    optimizer = sd.train.make_optimizer(1e-3, warmup_steps=5)
    state = sd.train.init_train_state(net, optimizer, seed=0)
    data = sd.data.two_moons(256, key=jax.random.key(1))
    sd.train.fit(
        state, sd.train.ArraySampler(data, 32), sd.train.dsm_objective(sde),
        optimizer, int(sys.argv[1]), checkpoint_path=sys.argv[2],
        checkpoint_every=3, keep_checkpoints=2, log_path=sys.argv[3], log_every=1,
        progress=False,
    )
"""


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.3, 1.1])
def test_sigkill_anywhere_resumes_bitwise(tmp_path, delay):
    # A real SIGKILL at some point after the first checkpoint (mid-step, mid-log,
    # or mid-write), then a resumed run: state and log equal an uninterrupted run.
    num_steps, folder, log = 400, tmp_path / "run", tmp_path / "run.jsonl"
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(_TRAIN))
    args = [sys.executable, str(script), str(num_steps), str(folder), str(log)]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_ENABLE_X64": "1"}  # as conftest
    proc = subprocess.Popen(args, env=env)
    deadline = time.monotonic() + 240
    while not list(folder.glob("step-*.ckpt")) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # killed, not finished
    print(
        f"killed after step {max(s for s, _ in _checkpoint.checkpoint_steps(folder))}"
    )
    straight_log = tmp_path / "straight.jsonl"
    state0 = _setup()[0]
    straight, _ = _fit(state0, num_steps, log_path=straight_log, log_every=1)
    resumed, _ = _fit(
        state0, num_steps, checkpoint_path=folder, checkpoint_every=3,
        keep_checkpoints=2, log_path=log, log_every=1,
    )  # fmt: skip
    assert _equal(resumed, straight)
    assert _read_log(log) == _read_log(straight_log)
