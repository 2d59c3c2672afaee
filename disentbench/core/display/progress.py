"""Progress for long work: a rich bar on a terminal, plain lines elsewhere (CI logs).

Reports model-steps/s (one optimizer step of one model) and an ETA over the
whole study, not just the current run.
"""

from __future__ import annotations

import sys
import time


def _fmt_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class StudyProgress:
    """Counts model-steps across all runs of one invocation."""

    def __init__(self, total_steps: int, *, enabled: bool = True, stream=None, plain_every: float = 10.0):
        self.total = max(total_steps, 1)
        self.done = 0
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.plain_every = plain_every
        self.start = time.perf_counter()
        self._last_plain = 0.0
        self._run_base = 0
        self._description = ""
        self._rich = None
        if enabled and self.stream.isatty():
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._rich = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TextColumn("{task.completed}/{task.total} steps"),
                TextColumn("{task.fields[rate]} model-steps/s"),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                transient=False,
            )
            self._task = self._rich.add_task("", total=self.total, rate="-")
            self._rich.start()

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def start_run(self, description: str) -> None:
        self._run_base = self.done
        self._description = description
        self.message(f"start {description}")

    def update_run(self, step_in_run: int) -> None:
        self.done = self._run_base + step_in_run
        if not self.enabled:
            return
        rate = self.rate
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        if self._rich is not None:
            self._rich.update(self._task, completed=self.done, description=self._description, rate=f"{rate:,.0f}")
        else:
            now = time.perf_counter()
            if now - self._last_plain >= self.plain_every or self.done >= self.total:
                self._last_plain = now
                pct = 100.0 * self.done / self.total
                eta_text = _fmt_seconds(eta) if eta == eta else "?"
                print(
                    f"  {self._description}: {self.done}/{self.total} steps ({pct:.0f}%), "
                    f"{rate:,.0f} model-steps/s, ETA {eta_text}",
                    file=self.stream,
                    flush=True,
                )

    def finish_run(self, steps_in_run: int) -> None:
        self.done = self._run_base + steps_in_run

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        if self._rich is not None:
            self._rich.console.print(text)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
