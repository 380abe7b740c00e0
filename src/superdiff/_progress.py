"""Progress bars that stay readable in a log: a tqdm bar on a terminal (or in a
notebook), periodic plain lines anywhere else."""

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm.auto import tqdm


class _PlainProgress:
    """What a bar becomes when its stream is not a terminal: one `\\n`-terminated
    line each time another `every` of the total is done or `interval` seconds have
    passed since the last line, whichever comes first, and one at the end. It
    answers the part of tqdm's interface that superdiff uses: iteration, `update`,
    `set_postfix`, `close` and use as a context manager."""

    def __init__(
        self,
        iterable: Iterable | None,
        total: int | None,
        initial: int,
        desc: str | None,
        file: TextIO,
        every: float,
        interval: float,
    ):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # pyright: ignore[reportArgumentType]
        self.iterable = iterable
        self.total = total
        self.n = self.initial = initial
        self.desc = desc
        self.file = file
        self.every = every
        self.interval = interval
        self.postfix: dict[str, Any] = {}
        self.start = self.last_time = time.perf_counter()
        self.last_n = initial
        self.closed = False

    def _fraction_step(self, n: int) -> int:
        assert self.total
        return int(n / self.total / self.every + 1e-9)

    def _line(self) -> str:
        elapsed = time.perf_counter() - self.start
        parts = [f"{self.n}/{self.total}" if self.total else f"{self.n}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f}%)"
        parts.append(f"{elapsed:.0f} s")
        if self.n > self.initial and elapsed > 0:
            parts.append(f"{(self.n - self.initial) / elapsed:.3g} it/s")
        parts += [f"{key}={value}" for key, value in self.postfix.items()]
        return (f"{self.desc}: " if self.desc else "") + ", ".join(parts)

    def _emit(self) -> None:
        # One write per line, so that lines from bars in other threads never mix.
        self.file.write(self._line() + "\n")
        self.file.flush()
        self.last_time, self.last_n = time.perf_counter(), self.n

    def update(self, n: int = 1) -> None:
        self.n += n
        crossed = bool(self.total) and (
            self._fraction_step(self.n) > self._fraction_step(self.last_n)
        )
        if crossed or time.perf_counter() - self.last_time >= self.interval:
            self._emit()

    def set_postfix(self, **kwargs: Any) -> None:
        self.postfix = kwargs

    def close(self) -> None:
        if not self.closed and self.n != self.last_n:
            self._emit()
        self.closed = True

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("This progress bar was made without an iterable.")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "_PlainProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Disabled:
    """A bar that shows nothing (`disable=True`)."""

    def __init__(self, iterable: Iterable | None):
        self.iterable = iterable

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("This progress bar was made without an iterable.")
        return iter(self.iterable)

    def __enter__(self) -> "_Disabled":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def _interactive(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    # A notebook's streams are no terminals, but tqdm.auto draws a widget there.
    return bool(isatty is not None and isatty()) or "ipykernel" in sys.modules


def progress_bar(
    iterable: Iterable | None = None,
    *,
    total: int | None = None,
    initial: int = 0,
    desc: str | None = None,
    disable: bool = False,
    position: int | None = None,
    file: TextIO | None = None,
    every: float = 0.1,
    interval: float = 30.0,
    **tqdm_kwargs: Any,
) -> Any:
    """A progress bar over `iterable` (or one advanced by `update(n)`, out of
    `total`), suited to where it is written.

    On a terminal or in a notebook it is a `tqdm.auto.tqdm` bar (on line `position`,
    for bars side by side in threads; `tqdm_kwargs` are passed on). Anywhere else (a
    log file, a pipe, a job scheduler's output) a redrawn bar would be one long
    `\\r`-joined line, so it writes plain lines instead: `desc: n/total (p%), s,
    rate, postfix`, each time another fraction `every` of the total is done or
    `interval` seconds have passed since the last line, and once at the end.

    **Arguments:**

    - `iterable`, `total`, `initial`, `desc`, `disable`, `position`: as tqdm's.
    - `file`: the stream, `sys.stderr` by default (as tqdm's).
    - `every`: the fraction of the total between plain lines.
    - `interval`: the most seconds between plain lines.

    **Returns:**

    An object with tqdm's iteration, `update`, `set_postfix` and `close`, usable as
    a context manager.
    """
    if not 0 < every <= 1:
        raise ValueError(f"`every` must be in (0, 1]; got {every}.")
    if not interval > 0:
        raise ValueError(f"`interval` must be positive; got {interval}.")
    if disable:
        return _Disabled(iterable)
    stream = sys.stderr if file is None else file
    if _interactive(stream):
        return tqdm(
            iterable, total=total, initial=initial, desc=desc, position=position,
            file=file, **tqdm_kwargs,
        )  # fmt: skip
    return _PlainProgress(iterable, total, initial, desc, stream, every, interval)
