"""The migration's progress, per phase: rows done, rows a second and time left. On a terminal,
rich's live bars; otherwise (a log file, CI) the same as a log line every few seconds."""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("regiongate.identity.migrate")
LOG_INTERVAL_S = 5.0


class Progress:
    def __init__(self, *, terminal: bool | None = None, quiet: bool = False) -> None:
        self._terminal = sys.stderr.isatty() if terminal is None else terminal
        self._quiet = quiet
        self._rich = None
        self._task = None
        self._phase = ""
        self._total: int | None = None
        self._done = 0
        self._started = 0.0
        self._logged = 0.0

    def start(self, phase: str, total: int | None) -> None:
        self.finish()
        self._phase, self._total, self._done = phase, total, 0
        self._started = self._logged = time.monotonic()
        if self._quiet:
            return
        if self._terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self._rich = RichProgress(
                TextColumn("{task.description:<10}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>9} rows/s"),
                TimeRemainingColumn(),
                transient=False,
            )
            self._rich.start()
            self._task = self._rich.add_task(phase, total=total, rate="")
        else:
            log.info("%s: started%s", phase, f", {total} rows" if total is not None else "")

    def skip(self, rows: int) -> None:
        """Rows an earlier run already did: off the total, and out of this run's rate."""
        if self._total is not None:
            self._total -= rows
            if self._rich is not None:
                self._rich.update(self._task, total=self._total)

    def advance(self, rows: int) -> None:
        self._done += rows
        now = time.monotonic()
        rate = self._done / max(now - self._started, 1e-9)
        if self._quiet:
            return
        if self._rich is not None:
            self._rich.update(self._task, advance=rows, rate=f"{rate:,.0f}")
        elif now - self._logged >= LOG_INTERVAL_S:
            self._logged = now
            left = (
                f", {(self._total - self._done) / rate:.0f} s left" if self._total and rate else ""
            )
            log.info("%s: %d rows, %.0f rows/s%s", self._phase, self._done, rate, left)

    def finish(self) -> float:
        """End the phase; its rows a second."""
        if not self._phase:
            return 0.0
        elapsed = max(time.monotonic() - self._started, 1e-9)
        rate = self._done / elapsed
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
        elif not self._quiet:
            log.info("%s: %d rows in %.1f s, %.0f rows/s", self._phase, self._done, elapsed, rate)
        self._phase = ""
        return rate
