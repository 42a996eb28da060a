"""Progress of long work for people: a bar in a terminal, a plain line every STATUS_SECONDS in a log.

A tqdm bar redraws itself in place; in a log (a Slurm job's output, `prepare … | tee`) every redraw would stay in
the file, or, with tqdm's own choice outside a terminal, nothing at all is shown for minutes. So outside a terminal
the same facts go out as one line at most every STATUS_SECONDS. Either way a step ends with one line of what it
did, with counts and seconds, which is what a Slurm step's log is read for.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

STATUS_SECONDS = 30.0


def duration(seconds: float) -> str:
    """A rough time for people: 40 s, 12 min, 3.5 h."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 90 * 60 else f"{seconds / 3600:.1f} h"


def short(number: float) -> str:
    """A number for a status line: 850, 41.2K, 1.31M."""
    for scale, suffix in ((1e6, "M"), (1e3, "K")):
        if number >= scale:
            return f"{number / scale:.3g}{suffix}"
    return f"{number:.0f}"


def amount(count: float, unit: str) -> str:
    """12,345 characters; 4.2 MB."""
    return f"{count / 1e6:.1f} MB" if unit == "bytes" else f"{count:,.0f} {unit}"


class Progress:
    """One step over `total` units of work (bytes or characters) in `files` files: `advance` as work is done,
    `done` once at the end. A context manager, so that the bar is closed on every path."""

    def __init__(self, step: str, total: int, files: int, unit: str = "characters", *, out: TextIO | None = None,
                 every: float | None = None) -> None:
        self.step, self.total, self.files, self.unit = step, total, files, unit
        self.every = STATUS_SECONDS if every is None else every
        self.out = out or sys.stdout
        self.count = self.file = 0
        self.start = self.said = time.monotonic()
        self.bar = tqdm(total=total, desc=step, unit="B" if unit == "bytes" else "char", unit_scale=True,
                        dynamic_ncols=True) if sys.stderr.isatty() else None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()

    def advance(self, count: int, file: int) -> None:
        """`count` more units done; `file` (counted from 1) is the one being worked on."""
        self.count, self.file = self.count + count, max(self.file, file)
        if self.bar is not None:
            self.bar.set_postfix_str(f"file {self.file} of {self.files}", refresh=False)
            self.bar.update(count)
        elif time.monotonic() - self.said >= self.every:
            self.said = time.monotonic()
            print(self.status(), file=self.out, flush=True)

    def status(self) -> str:
        """Where the step is: file 3 of 8, how much of how much, the speed and the time left at that speed."""
        spent = time.monotonic() - self.start
        left = f", about {duration(spent * (self.total - self.count) / self.count)} left" \
            if 0 < self.count < self.total else ""
        done = amount(self.count, self.unit).rsplit(" ", 1)[0]  # 5.0 of 10.0 MB; 1,000 of 3,000 characters
        return (f"{self.step}: file {self.file} of {self.files}, {done} of {amount(self.total, self.unit)} "
                f"({self.speed(spent)}){left}")

    def speed(self, spent: float) -> str:
        """1.3 MB/s; 176K characters/s."""
        per_s = self.count / spent if spent > 0 else 0.0
        return f"{per_s / 1e6:.1f} MB/s" if self.unit == "bytes" else f"{short(per_s)} {self.unit}/s"

    def done(self, what: str) -> None:
        """The step's closing line: what it did (counts), in how many seconds, at what speed."""
        spent = time.monotonic() - self.start
        if self.bar is not None:
            self.bar.close()
        print(f"{self.step}: {what} in {spent:.1f} s ({self.speed(spent)})", file=self.out, flush=True)
