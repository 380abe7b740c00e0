"""The command line every experiment shares: flags checked before any work, with
argparse-style errors that name the flag; `--help` with every default; presets
whose every field is a flag; and an entry point that ends a user's error with its
message alone (exit status 2) and a bug with its traceback."""

import argparse
import contextlib
import copy
import dataclasses
import inspect
import logging
import math
import os
import sys
import threading
import traceback
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

from ..data import DataNotFoundError, load_images
from ..train import CheckpointError


class UsageError(Exception):
    """A mistake in how an experiment was called (a flag's value, a combination of
    flags, missing data): `run` prints its message alone, as `prog: error: ...`, and
    exits with status 2."""


# --------------------------------------------------------------------------------
# Flag types: each turns the flag's text into a value or says what it must be.


def positive_int(text: str) -> int:
    """An integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a positive integer; got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {value}")
    return value


def non_negative_int(text: str) -> int:
    """An integer ≥ 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a non-negative integer; got {text!r}"
        ) from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer; got {value}")
    return value


def _finite_float(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}; got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {what}; got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _finite_float(text, "a positive number")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number; got {value}")
    return value


def probability(text: str) -> float:
    """A number in [0, 1]."""
    value = _finite_float(text, "a probability in [0, 1]")
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(
            f"must be a probability in [0, 1]; got {value}"
        )
    return value


def existing_dir(text: str) -> Path:
    """A folder that exists (to read from)."""
    path = Path(text).expanduser()
    if not path.is_dir():
        state = "is not a folder" if path.exists() else "does not exist"
        raise argparse.ArgumentTypeError(f"must be an existing folder; {text} {state}")
    return path


def output_dir(text: str) -> Path:
    """A folder to write to: one that exists, or one that can be created (its
    nearest existing parent is a writable folder). Nothing is created here."""
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise argparse.ArgumentTypeError(
                f"must be a folder to write to; {text} is a file"
            )
        if not os.access(path, os.W_OK):
            raise argparse.ArgumentTypeError(
                f"must be a folder to write to; {text} is not writable"
            )
        return path
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(
            f"must be a folder to write to; {text} cannot be created under {parent}"
        )
    return path


# --------------------------------------------------------------------------------
# The parser


class _HelpFormatter(
    argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter
):
    """Every flag's default in `--help`, flags without help text included; the
    description as written."""

    def _format_action(self, action: argparse.Action) -> str:
        if (
            action.help is None
            and action.option_strings
            and action.default is not argparse.SUPPRESS
        ):
            action = copy.copy(action)
            action.help = "(default: %(default)s)"
        return super()._format_action(action)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _field_type(cls: type, field: dataclasses.Field) -> dict[str, Any]:
    """How a preset field is parsed: `metadata["type"]` if given, else from its
    annotation (`int` positive, `float` positive, `Literal[...]` a choice)."""
    if "type" in field.metadata:
        return {"type": field.metadata["type"]}
    annotation = typing.get_type_hints(cls)[field.name]
    if typing.get_origin(annotation) is typing.Literal:
        return {"choices": typing.get_args(annotation)}
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if annotation is int:
        return {"type": positive_int}
    if annotation is float:
        return {"type": positive_float}
    if annotation is str:
        return {"type": str}
    raise TypeError(
        f"Preset field {field.name!r} has type {annotation!r}; give it "
        '`metadata={"type": parse}` to say how its flag is parsed.'
    )


class ExperimentParser(argparse.ArgumentParser):
    """An `argparse.ArgumentParser` with the experiments' conventions.

    - `--help` prints the description as written and every flag's default.
    - A flag whose type rejects its value (see `positive_int`, `positive_float`,
      `probability`, `existing_dir`, `output_dir`) ends the run before any work with
      `prog: error: --flag must be ...; got ...` and exit status 2.
    - `add_presets` makes every field of a preset dataclass a flag that overrides
      the chosen preset; `--help` lists each preset's value of each field, and
      `--show-preset NAME` prints one preset in full and exits.

    Checks that involve several flags go after `parse_args`, as `parser.error(...)`.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        # Errors come back to `parse_known_args` below, to be worded there.
        kwargs["exit_on_error"] = False
        super().__init__(*args, **kwargs)
        self._presets: Mapping[str, Any] | None = None

    def parse_known_args(  # pyright: ignore[reportIncompatibleMethodOverride]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        try:
            namespace, extras = super().parse_known_args(args, namespace)
        except argparse.ArgumentError as err:
            # The flag types' messages read "must be ..." after the flag's name.
            name, message = err.argument_name, err.message
            if name is None:
                self.error(message)
            sep = " " if message.startswith("must ") else ": "
            self.error(f"{name}{sep}{message}")
        if self._presets is not None:
            self._resolve_presets(namespace)
        return namespace, extras

    def add_presets(
        self,
        presets: Mapping[str, Any],
        default: str,
        *,
        title: str = "preset settings",
    ) -> None:
        """Add `--preset NAME` (one of `presets`, `default` unless given), one flag
        per field of the presets' dataclass, and `--show-preset NAME`.

        After parsing, the namespace holds `preset` (the chosen name), `config` (the
        chosen preset with the flags given applied, a dataclass of the same type)
        and each field's final value under the field's name.

        A field's flag is `--field-name`; its type comes from
        `field.metadata["type"]` or the annotation (`int`: positive, `float`:
        positive, `Literal[...]`: one of those, `bool`: `--x`/`--no-x`), and its
        help from `field.metadata["help"]`.
        """
        if self._presets is not None:
            raise ValueError("`add_presets` may be called once per parser.")
        if default not in presets:
            raise ValueError(
                f"`default` must be one of {list(presets)}; got {default!r}."
            )
        classes = {type(p) for p in presets.values()}
        if len(classes) != 1 or not dataclasses.is_dataclass(next(iter(classes))):
            raise TypeError("`presets` must be instances of one dataclass.")
        self._presets = presets
        cls = next(iter(classes))
        names = ", ".join(presets)
        self.add_argument(
            "--preset", choices=list(presets), default=default,
            help="a set of the settings below; each has a flag that overrides it",
        )  # fmt: skip
        self.add_argument(
            "--show-preset", choices=list(presets), metavar="NAME",
            default=argparse.SUPPRESS, action=_ShowPreset,
            help=f"print the settings of a preset ({names}) and exit",
        )  # fmt: skip
        group = self.add_argument_group(
            title, f"Each overrides the chosen --preset's value ({names} below)."
        )
        for field in dataclasses.fields(cls):
            values = ", ".join(
                f"{name} {getattr(preset, field.name)}"
                for name, preset in presets.items()
            )
            text = field.metadata.get("help")
            group.add_argument(
                _flag(field.name), dest=field.name, default=argparse.SUPPRESS,
                help=(f"{text}; " if text else "") + values, **_field_type(cls, field),
            )  # fmt: skip

    def _resolve_presets(self, namespace: argparse.Namespace) -> None:
        assert self._presets is not None
        preset = self._presets[namespace.preset]
        overrides = {
            f.name: getattr(namespace, f.name)
            for f in dataclasses.fields(preset)
            if hasattr(namespace, f.name)
        }
        config = dataclasses.replace(preset, **overrides)
        for f in dataclasses.fields(config):
            setattr(namespace, f.name, getattr(config, f.name))
        namespace.config = config

    def preset_text(self, name: str) -> str:
        """The preset `name`, one `--flag value` a line."""
        assert self._presets is not None
        preset = self._presets[name]
        lines = [f"preset {name}:"] + [
            f"  {_flag(f.name)} {getattr(preset, f.name)}"
            for f in dataclasses.fields(preset)
        ]
        return "\n".join(lines)

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


class _ShowPreset(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None) -> NoReturn:
        assert isinstance(parser, ExperimentParser) and isinstance(values, str)
        print(parser.preset_text(values))
        parser.exit(0)


# --------------------------------------------------------------------------------
# Data and the entry point


@contextlib.contextmanager
def _quiet_absl_missing_dataset_info() -> Iterator[None]:
    """tensorflow-datasets logs a warning for every folder it looks in without a
    prepared copy; the error that follows says the same, better."""

    def drop(record: logging.LogRecord) -> bool:
        return "has no dataset_info.json" not in record.getMessage()

    logger = logging.getLogger("absl")
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def load_data(
    name: str, split: str, data_dir: Path | None, *, flag: str = "--data-dir"
) -> Any:
    """`superdiff.data.load_images(name, split, data_dir)`, for a command line: when
    the data is not found, a `UsageError` whose message (where it looked and how to
    provide the data) speaks of the flag `flag` where `load_images` speaks of its
    argument `data_dir`."""
    try:
        with _quiet_absl_missing_dataset_info():
            return load_images(name, split, data_dir)  # pyright: ignore[reportArgumentType]
    except DataNotFoundError as err:
        message = (
            str(err)
            .replace("pass `data_dir=DIR`", f"pass `{flag} DIR`")
            .replace("`data_dir`", f"`{flag}`")
        )
        raise UsageError(message) from None


def run(
    main: Callable[[Sequence[str] | None], object], argv: Sequence[str] | None = None
) -> None:
    """Call `main(argv)` as a program's entry point.

    A `UsageError` or `superdiff.data.DataNotFoundError` ends it with
    `prog: error: message` on stderr and exit status 2 (`SystemExit(2)`), as
    argparse ends a bad flag; `prog` is the name of `main`'s file. A
    `superdiff.train.CheckpointError` (no space, permission denied, a damaged
    checkpoint with none intact to fall back on, a different configuration under
    the same `--out`) ends the same way with status 1. Ctrl-C ends it
    with a line saying how to resume (status 130). Any other exception is a bug and
    keeps its traceback (status 1). Where other threads are still running (jobs
    side by side), these end the process at once instead of waiting for them.
    """
    try:
        file = inspect.getsourcefile(main)
    except TypeError:
        file = None
    prog = Path(file or sys.argv[0]).name

    try:
        main(argv)
    except (UsageError, DataNotFoundError) as err:
        sys.stdout.flush()
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except CheckpointError as err:
        sys.stdout.flush()
        hint = (
            " (a run with other settings under the same --out? Give a new --out, "
            "or delete that folder to start fresh.)"
            if err.kind == "mismatch"
            else ""
        )
        print(f"{prog}: error: {err}{hint}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        print(
            "\ninterrupted: every checkpoint written is complete; run the same "
            "command again to resume.",
            file=sys.stderr,
        )
        _exit_now(130)
        raise SystemExit(130) from None
    except Exception:
        if threading.active_count() == 1:
            raise
        sys.stdout.flush()  # what was printed before the traceback, before it
        traceback.print_exc()
        _exit_now(1)
        raise


def _exit_now(status: int) -> None:
    """End the process without waiting for other threads, if there are any."""
    if threading.active_count() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
