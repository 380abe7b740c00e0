"""The experiments' command line: every flag checked before any work, with an
argparse-style error that names it (exit status 2, no traceback); missing data
reported before anything is written; presets shown by `--help` and
`--show-preset`; and progress that prints plain lines where there is no terminal.
The experiments are imported and their `main(argv)` called in-process, so no test
here pays for more than argument parsing, except the one subprocess run."""

import argparse
import dataclasses
import importlib.util
import io
import subprocess
import sys
import time
from pathlib import Path
from typing import Literal

import jax
import jax.numpy as jnp
import pytest

import superdiff as sd
import superdiff.experiment as cli


ROOT = Path(__file__).resolve().parents[1]


def _experiment(name: str):
    """`experiments/<name>.py` as a module (imported once)."""
    module_name = f"_experiment_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            module_name, ROOT / "experiments" / f"{name}.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


@pytest.fixture
def no_compute(monkeypatch):
    """Training or sampling, if a bad flag let either start, fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("computation started before the flags were checked")

    monkeypatch.setattr(sd.train, "fit", refuse)
    monkeypatch.setattr(sd, "sample", refuse)
    monkeypatch.setattr(sd.data, "load_images", refuse)


BAD_FLAGS = [
    ("two_moons", ["--num-steps", "0"], "--num-steps must be a positive integer; got 0"),
    ("two_moons", ["--num-samples", "-5"], "--num-samples must be a positive integer; got -5"),
    ("two_moons", ["--train-steps", "many"], "--train-steps must be a positive integer; got 'many'"),
    ("two_moons", ["--lr", "0"], "--lr must be a positive number; got 0.0"),
    ("two_moons", ["--solver", "rk4"], "--solver: invalid choice: 'rk4' (choose from 'euler', 'heun', 'sra1')"),
    ("split_mnist", ["--preset", "paper"], "--preset: invalid choice: 'paper' (choose from 'cpu', 'gpu')"),
    ("split_mnist", ["--num-samples", "0"], "--num-samples must be a positive integer; got 0"),
    ("split_mnist", ["--lr", "nan"], "--lr must be a positive number; got nan"),
    ("split_mnist", ["--unet", "huge"], "--unet: invalid choice: 'huge' (choose from 'small', 'large')"),
    ("split_cifar10", ["--preset", "huge"], "--preset: invalid choice: 'huge' (choose from 'cpu', 'gpu', 'paper')"),
    ("split_cifar10", ["--ema-decay", "2"], "--ema-decay must be a probability in [0, 1]; got 2.0"),
    ("density", ["--guidance-steps", "0"], "--guidance-steps must be a positive integer; got 0"),
    ("density", ["--num-samples", "1.5"], "--num-samples must be a positive integer; got '1.5'"),
]  # fmt: skip


@pytest.mark.parametrize("name, argv, message", BAD_FLAGS)
def test_a_bad_flag_ends_the_experiment_before_any_work(
    name, argv, message, tmp_path, capsys, no_compute
):
    main = _experiment(name).main
    out = tmp_path / "out"
    tic = time.perf_counter()
    with pytest.raises(SystemExit) as exit_info:
        cli.run(main, ["--out", str(out), *argv])
    # Argument parsing only (ms); the bound leaves room for a loaded machine.
    assert time.perf_counter() - tic < 1.0
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"{name}.py: error: {message}"
    assert "Traceback" not in err
    assert not out.exists()


def test_missing_data_is_reported_before_anything_is_written(tmp_path, capsys, caplog):
    main = _experiment("split_mnist").main
    out, empty = tmp_path / "out", tmp_path / "empty"
    empty.mkdir()
    for data_dir in (empty, tmp_path / "absent"):
        with pytest.raises(SystemExit) as exit_info:
            cli.run(main, ["--data-dir", str(data_dir), "--out", str(out)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("split_mnist.py: error: No mnist 'train' split found")
        assert "pass it as `--data-dir`" in err and "pass `--data-dir DIR`" in err
        assert "`data_dir`" not in err
        assert "train-images-idx3-ubyte.gz" in err  # how to provide the data
        assert "Traceback" not in err
        assert not out.exists()
    # tensorflow-datasets' warning for the folder without a prepared copy is not
    # shown: the error says the same.
    assert "dataset_info.json" not in caplog.text


def test_the_real_exit_status_and_no_traceback():
    run = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "two_moons.py"), "--num-steps", "0"],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert run.stderr.splitlines()[-1] == (
        "two_moons.py: error: --num-steps must be a positive integer; got 0"
    )
    assert run.stdout == ""


@pytest.mark.parametrize("name", ["two_moons", "split_mnist", "density"])
def test_help_shows_every_default(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _experiment(name).main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--num-steps" in text and "--out" in text
    if name == "split_mnist":
        # Preset settings show each preset's value; other flags their default.
        assert "reverse-SDE steps per sample; cpu 100, gpu 1000" in text
        assert "(default: outputs/split_mnist)" in text
    else:
        assert f"(default: outputs/{name})" in text
        assert "(default: 500)" in text  # --num-steps
    if name == "two_moons":
        assert "(default: 256)" in text  # --batch-size, a flag without help text


def test_split_mnist_show_preset(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _experiment("split_mnist").main(["--show-preset", "gpu"])
    assert exit_info.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "preset gpu:"
    assert "  --train-steps 40000" in lines and "  --unet large" in lines
    assert len(lines) == 1 + len(dataclasses.fields(_experiment("split_mnist").Preset))


# --------------------------------------------------------------------------------
# The helper


@pytest.mark.parametrize(
    "parse, good, bad",
    [
        (cli.positive_int, {"1": 1, "40000": 40000}, ["0", "-3", "2.5", "x", ""]),
        (cli.non_negative_int, {"0": 0, "7": 7}, ["-1", "1e3"]),
        (cli.positive_float, {"2e-4": 2e-4, "3": 3.0}, ["0", "-1", "nan", "inf", "a"]),
        (cli.probability, {"0": 0.0, "1": 1.0, "0.25": 0.25}, ["1.5", "-0.1", "nan"]),
    ],
)
def test_flag_types(parse, good, bad):
    for text, value in good.items():
        assert parse(text) == value and type(parse(text)) is type(value)
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=r"^must be .*; got "):
            parse(text)


def test_folder_flag_types(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("")
    new = tmp_path / "a" / "b"
    assert cli.output_dir(str(tmp_path)) == tmp_path
    assert cli.output_dir(str(new)) == new and not new.exists()  # nothing created
    with pytest.raises(argparse.ArgumentTypeError, match="is a file"):
        cli.output_dir(str(a_file))
    with pytest.raises(argparse.ArgumentTypeError, match="cannot be created"):
        cli.output_dir(str(a_file / "sub"))
    assert cli.existing_dir(str(tmp_path)) == tmp_path
    with pytest.raises(argparse.ArgumentTypeError, match="does not exist"):
        cli.existing_dir(str(new))
    with pytest.raises(argparse.ArgumentTypeError, match="is not a folder"):
        cli.existing_dir(str(a_file))


@dataclasses.dataclass(frozen=True)
class _Settings:
    steps: int = dataclasses.field(metadata={"help": "training steps"})
    lr: float
    kind: Literal["mlp", "unet"]
    share: float = dataclasses.field(metadata={"type": cli.probability})
    ema: bool


_PRESETS = {
    "fast": _Settings(steps=10, lr=1e-2, kind="mlp", share=0.5, ema=False),
    "slow": _Settings(steps=1000, lr=1e-4, kind="unet", share=0.9, ema=True),
}


def _parser() -> cli.ExperimentParser:
    p = cli.ExperimentParser(prog="exp.py", description="An experiment.")
    p.add_argument("--seed", type=int, default=3)
    p.add_presets(_PRESETS, "fast")
    return p


def test_presets_are_flags_that_override_the_preset():
    args = _parser().parse_args(["--preset", "slow", "--lr", "0.5", "--no-ema"])
    assert args.preset == "slow"
    assert args.config == dataclasses.replace(_PRESETS["slow"], lr=0.5, ema=False)
    assert (args.steps, args.lr, args.kind, args.ema, args.seed) == (
        1000, 0.5, "unet", False, 3,
    )  # fmt: skip
    assert _parser().parse_args([]).config == _PRESETS["fast"]


def test_preset_values_in_help_and_show_preset(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # help wraps its lines
    assert "training steps; fast 10, slow 1000" in text
    assert "--kind {mlp,unet} fast mlp, slow unet" in text
    assert "--preset {fast,slow} " in text and "(default: fast)" in text
    assert "--seed SEED (default: 3)" in text
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args(["--show-preset", "slow"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.splitlines() == [
        "preset slow:", "  --steps 1000", "  --lr 0.0001", "  --kind unet",
        "  --share 0.9", "  --ema True",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "--steps must be a positive integer; got 0"),
        (["--share", "2"], "--share must be a probability in [0, 1]; got 2.0"),
        (["--show-preset", "medium"], "--show-preset: invalid choice: 'medium' (choose from 'fast', 'slow')"),
        (["--steps"], "--steps: expected one argument"),
        (["--stepz", "3"], "unrecognized arguments: --stepz 3"),
    ],
)  # fmt: skip
def test_preset_flag_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"exp.py: error: {message}"


def test_run_ends_user_errors_with_their_message_and_keeps_bugs_tracebacks(capsys):
    def usage(argv):
        raise cli.UsageError("--a and --b cannot be used together")

    def missing(argv):
        raise sd.data.DataNotFoundError("No mnist 'train' split found.")

    def bug(argv):
        raise KeyError("a bug")

    for main, message in [
        (usage, "--a and --b cannot be used together"),
        (missing, "No mnist 'train' split found."),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            cli.run(main, [])
        assert exit_info.value.code == 2
        assert capsys.readouterr().err == f"test_cli.py: error: {message}\n"
    with pytest.raises(KeyError, match="a bug"):
        cli.run(bug, [])


def test_run_ends_checkpoint_errors_with_their_message(capsys, tmp_path):
    # A checkpoint of another configuration under the same --out: one line, the
    # file, the cause and what to do; status 1, no traceback.
    folder = tmp_path / "model.eqx"
    sd.train.save_checkpoint(folder / "step-00000001.ckpt", {"w": jnp.zeros(3)})

    def resume(argv):
        sd.train.load_checkpoint(folder, {"w": jnp.zeros(4)})

    with pytest.raises(SystemExit) as exit_info:
        cli.run(resume, [])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("test_cli.py: error: ")
    assert "model.eqx" in err and "new --out" in err


def test_progress_bar_prints_plain_lines_where_there_is_no_terminal():
    log = io.StringIO()  # not a terminal
    bar = cli.progress_bar(total=100, initial=20, desc="train", file=log, every=0.25)
    for _ in range(80):
        bar.update(1)
        bar.set_postfix(loss="0.5")
    bar.close()
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    # One line per quarter of the total crossed (25, 50, 75 and 100 %); the last
    # is not repeated by `close`.
    assert [line.split(",")[0] for line in lines] == [
        "train: 25/100 (25%)", "train: 50/100 (50%)", "train: 75/100 (75%)",
        "train: 100/100 (100%)",
    ]  # fmt: skip
    assert lines[-1].endswith("loss=0.5") and "it/s" in lines[-1]

    log = io.StringIO()
    items = list(cli.progress_bar(range(7), desc="sampling", file=log, every=1.0))
    assert items == list(range(7)) and log.getvalue() == log.getvalue().strip() + "\n"
    assert log.getvalue().startswith("sampling: 7/7 (100%)")

    # A line at least every `interval` seconds, however little was done.
    log = io.StringIO()
    bar = cli.progress_bar(total=10**6, file=log, interval=1e-9)
    bar.update(1)
    bar.update(1)
    assert log.getvalue().splitlines()[1].startswith("2/1000000 (0%)")

    log = io.StringIO()
    bar = cli.progress_bar(total=10, file=log, disable=True)
    bar.update(10)
    bar.close()
    assert log.getvalue() == ""


def test_progress_bar_is_tqdm_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    bar = cli.progress_bar(total=4, desc="train", file=terminal)
    bar.update(4)
    bar.close()
    assert type(bar).__module__.startswith("tqdm")
    assert "\r" in terminal.getvalue()  # redrawn in place
    with pytest.raises(ValueError, match="`every`"):
        cli.progress_bar(total=4, every=0)


def test_fit_writes_plain_progress_lines_to_a_log(capsys):
    net = sd.nn.MLP(2, width=8, depth=1, key=jax.random.key(0))
    optimizer = sd.train.make_optimizer(1e-3, warmup_steps=1)
    state = sd.train.init_train_state(net, optimizer, seed=0)
    sampler = sd.train.ArraySampler(sd.data.two_moons(64, key=jax.random.key(1)), 8)
    sd.train.fit(
        state, sampler, sd.train.dsm_objective(sd.VPSDE()), optimizer, 2,
        log_every=1, description="tiny",
    )  # fmt: skip
    err = capsys.readouterr().err  # pytest's capture is not a terminal
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("tiny: ")]
    assert [line.split(",")[0] for line in lines] == [
        "tiny: 1/2 (50%)",
        "tiny: 2/2 (100%)",
    ]
    assert "loss=" in lines[-1]
