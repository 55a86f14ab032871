"""Progress on stderr for long runs: one helper for the command line and the reproduction.

On a terminal, :class:`Progress` redraws one line in place: a bar, the percentage, the rate,
the ETA and the elapsed time. Elsewhere (CI logs, pipes) it writes a line at every further
10 % and at the end, at most one per ``every_s`` seconds. ``quiet=True`` writes nothing.

The callbacks the long-running functions take are adapters of one :class:`Progress`:

* :meth:`Progress.sim`: ``(done, total, attempt)`` of :func:`kvstab.simulate.simulate`;
* :meth:`Progress.stage`: ``(done, total, stage)`` of :mod:`kvstab.stability`;
* :meth:`Progress.optimizer`: ``(label, step, total, loss)`` of :mod:`kvstab.fit`.

Calling the object with a string (``progress("running")``) writes one message line, e.g.
``[3/25] table1: running (12.0 s)`` when ``job=(3, 25)``; :meth:`Progress.say` a plain line.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

BAR_WIDTH = 24


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, s = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}:{s:02d} min"
    return f"{minutes // 60}:{minutes % 60:02d} h"


class Progress:
    """Progress of one job on a stream (stderr by default).

    Args:
        label: what is running (``"kvstab simulate"``, an experiment's name).
        job: ``(k, n)``: this is job k of n in a longer run; lines start with ``[k/n]``.
        stream: where to write; default ``sys.stderr``.
        quiet: write nothing.
        every_s: off a terminal, at least this many seconds between two progress lines
            (the final line of each task is always written).
    """

    def __init__(
        self,
        label: str,
        *,
        job: tuple[int, int] | None = None,
        stream=None,
        quiet: bool = False,
        every_s: float = 0.0,
    ):
        self.label = label
        self.prefix = f"[{job[0]}/{job[1]}] " if job else ""
        self.stream = sys.stderr if stream is None else stream
        self.quiet = quiet
        self.every_s = every_s
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.perf_counter()
        self._open = False  # a bar line is drawn and not yet ended (terminal only)
        self._task: object = None
        self._bucket = -1
        self._last = -math.inf
        self._task_t0 = self.t0
        self._event = self.t0  # time of the last call: a new task started no earlier

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.t0

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def __call__(self, message: str) -> None:
        """One message line: ``[k/n] label: message (elapsed)``."""
        if self.quiet:
            return
        self.close()
        self._event = time.perf_counter()
        self._write(f"{self.prefix}{self.label}: {message} ({self.elapsed_s:.1f} s)\n")

    def say(self, text: str) -> None:
        """One plain line (no prefix, no time), e.g. which phase starts."""
        if self.quiet:
            return
        self.close()
        self._event = time.perf_counter()
        self._write(text + "\n")

    def update(
        self, done: float, total: float, note: str = "", unit: str = "", detail: str = ""
    ) -> None:
        """Report ``done`` of ``total`` units of work on the task ``note`` (``detail``: more
        text for the line, such as a loss, that does not start a new task)."""
        if self.quiet:
            return
        now = time.perf_counter()
        if note != self._task:  # a new task: its rate and ETA start afresh
            self._task, self._task_t0, self._bucket = note, self._event, -1
        self._event = now
        frac = min(max(done / total, 0.0), 1.0) if total else 1.0
        task_s = now - self._task_t0
        rate = done / task_s if task_s > 0 and done > 0 else math.nan
        eta = (total - done) / rate if rate and math.isfinite(rate) else math.nan
        parts = [f"{self.prefix}{self.label}:"]
        if self.tty:
            filled = int(round(frac * BAR_WIDTH))
            parts.append("[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]")
        parts.append(f"{100 * frac:5.1f}%")
        parts += [x for x in (note, detail) if x]
        if unit:
            parts.append(f"{done:g}/{total:g} {unit}")
            if math.isfinite(rate):
                parts.append(f"{rate:,.0f} {unit}/s" if rate >= 100 else f"{rate:.3g} {unit}/s")
        if frac < 1 and math.isfinite(eta):
            parts.append(f"ETA {_duration(eta)}")
        parts.append(f"elapsed {_duration(now - self.t0)}")
        line = "  ".join(parts)
        if self.tty:
            self._write("\r" + line.ljust(79))
            self._open = True
            return
        bucket = int(100 * frac // 10)
        final = frac >= 1
        if bucket > self._bucket and (final or now - self._last >= self.every_s):
            self._bucket, self._last = bucket, now
            self._write(line + "\n")

    def close(self) -> None:
        """End a bar drawn on a terminal (the next output starts on a new line)."""
        if self._open:
            self._write("\n")
            self._open = False

    # Adapters: the callback signatures of the long-running functions.

    def sim(self, note: str = "") -> Callable[[int, int, int], None]:
        """``progress(done, total, attempt)`` for :func:`kvstab.simulate.simulate`."""

        def report(done: int, total: int, attempt: int = 1) -> None:
            again = f"re-run {attempt} with larger buffers" if attempt > 1 else ""
            self.update(done, total, " ".join(x for x in (note, again) if x), unit="steps")

        return report

    def stage(self, note: str = "") -> Callable[[float, float, str], None]:
        """``progress(done, total, stage)`` for :mod:`kvstab.stability`."""

        def report(done: float, total: float, stage: str) -> None:
            self.update(done, total, f"{note}: {stage}" if note else stage)

        return report

    def optimizer(self) -> Callable[[str, int, int, float], None]:
        """``progress(label, step, total, loss)`` for the optimizer loops of :mod:`kvstab.fit`."""

        def report(label: str, step: int, total: int, loss: float) -> None:
            self.update(step, total, f"fitting {label}", "steps", f"loss {loss:.6g}")

        return report
