"""What a pipeline run shows and records: a live table of stages and jobs, and a log file.

On a terminal a rich live table lists every stage and, under it, its per-attribute jobs with
their state, time and, while one trains, its step counter (`step 12/40`, from the training loops'
`runtime.report_step`; jobs run in this process, not on Ray workers). Elsewhere (CI, a pipe)
each change is printed as one line instead. Every event, and everything the library logs meanwhile,
also goes to `pipeline.log` in the run directory, which is what to read after a run that was interrupted.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

LOG_FILE = "pipeline.log"
log = logging.getLogger("spunge_merge.pipeline")

_STYLES = {"pending": "dim", "running": "yellow", "done": "green", "skipped": "cyan", "failed": "red", "queued": "dim",
           "not started": "dim", "interrupted": "magenta"}
_MARKS = {"pending": "·", "running": "▶", "done": "✔", "skipped": "↷", "failed": "✘", "queued": "…", "not started": "·",
          "interrupted": "■"}


@dataclass
class _Row:
    name: str
    status: str = "pending"
    detail: str = ""
    started: float | None = None
    seconds: float | None = None
    jobs: dict[str, _Row] = field(default_factory=dict)


class RunView:
    """Context manager: `stage(...)` and `job(...)` update the view and the log."""

    def __init__(self, run_dir: Path, stages: list[str], *, title: str, console: Console | None = None, live: bool | None = None):
        self.console = console or Console(stderr=True)
        self.live_enabled = self.console.is_terminal if live is None else live
        self.title = title
        self.rows = {name: _Row(name) for name in stages}
        self.log_path = Path(run_dir) / LOG_FILE
        self._handler: logging.Handler | None = None
        self._live: Live | None = None
        self._level: int | None = None
        self._propagate = True
        self._warnings_propagate = True
        self._transformers_bars = False
        self._console_handler: logging.Handler | None = None
        self._steps = None

    # -- lifecycle ---------------------------------------------------------------------------------
    def __enter__(self) -> RunView:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._handler = logging.FileHandler(self.log_path, encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        package = logging.getLogger("spunge_merge")
        package.addHandler(self._handler)
        self._level, self._propagate = package.level, package.propagate
        if package.level == logging.NOTSET or package.level > logging.INFO:
            package.setLevel(logging.INFO)
        # Info goes to the file and the view only; warnings also to the console (above the live table).
        package.propagate = False
        self._console_handler = logging.StreamHandler()
        self._console_handler.setLevel(logging.WARNING)
        self._console_handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        package.addHandler(self._console_handler)
        # Library warnings (deprecations in transformers, mergekit...) go to the log, not over the view.
        logging.captureWarnings(True)
        warnings_logger = logging.getLogger("py.warnings")
        self._warnings_propagate = warnings_logger.propagate
        warnings_logger.addHandler(self._handler)
        warnings_logger.propagate = False
        self._quiet_transformers(True)
        from spunge_merge.runtime import listen_to_steps

        self._steps = listen_to_steps(self.step)
        self._steps.__enter__()
        if self.live_enabled:
            self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=False,
                              get_renderable=self._render)
            self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._steps is not None:
            self._steps.__exit__(None, None, None)
            self._steps = None
        if self._live is not None:
            self._live.stop()
            self._live = None
        warnings_logger = logging.getLogger("py.warnings")
        if self._handler is not None:
            warnings_logger.removeHandler(self._handler)
        warnings_logger.propagate = self._warnings_propagate
        logging.captureWarnings(False)
        package = logging.getLogger("spunge_merge")
        for handler in (self._handler, self._console_handler):
            if handler is not None:
                package.removeHandler(handler)
                handler.close()
        if self._level is not None:
            package.setLevel(self._level)
        package.propagate = self._propagate
        self._quiet_transformers(False)

    def _quiet_transformers(self, quiet: bool) -> None:
        """transformers' own bars (loading and writing weights) would tear the live table: off during the run."""
        try:
            from transformers.utils import logging as transformers_logging
        except ImportError:
            return
        if quiet:
            self._transformers_bars = transformers_logging.is_progress_bar_enabled()
            transformers_logging.disable_progress_bar()
        elif self._transformers_bars:
            transformers_logging.enable_progress_bar()

    # -- events ------------------------------------------------------------------------------------
    def stage(self, name: str, status: str, detail: str = "") -> None:
        row = self.rows.setdefault(name, _Row(name))
        status = self._failure(row, status)
        self._update(row, status, detail)
        self._emit(f"[{name}] {status}" + (f": {detail}" if detail else "") + self._took(row))

    def job(self, stage: str, key: str, label: str, status: str, detail: str = "") -> None:
        parent = self.rows.setdefault(stage, _Row(stage))
        row = parent.jobs.setdefault(key, _Row(label))
        status = self._failure(row, status)
        self._update(row, status, detail)
        self._emit(f"[{stage}] {label}: {status}" + (f" ({detail})" if detail else "") + self._took(row))

    def step(self, label: str, step: int, total: int) -> None:
        """A training step of the running job: its counter in the view; in the log (and, without a live table,
        on the console) at the first and last step and every tenth of the way."""
        running = [(stage, job) for stage in self.rows.values() for job in stage.jobs.values() if job.status == "running"]
        if not running:
            running = [(stage, stage) for stage in self.rows.values() if stage.status == "running"]
        for stage, row in running:
            row.detail = f"step {step}/{total}"
            if step in (1, total) or step % max(1, total // 10) == 0:
                self._emit(f"[{stage.name}] {row.name if row is not stage else label}: step {step}/{total}")

    def note(self, message: str) -> None:
        """A line of information: logged, and printed above the live table."""
        log.info(message)
        self.console.print(message)

    # -- internals ---------------------------------------------------------------------------------
    @staticmethod
    def _failure(row: _Row, status: str) -> str:
        """What a 'failed' really was: a job that never began did not fail ('not started'), and work stopped
        by Ctrl-C was 'interrupted' (callers report 'failed' from inside their `except` blocks)."""
        if status != "failed":
            return status
        if row.status in ("pending", "queued"):
            return "not started"
        if isinstance(sys.exc_info()[1], KeyboardInterrupt):
            return "interrupted"
        return status

    @staticmethod
    def _update(row: _Row, status: str, detail: str) -> None:
        if status == "running":
            row.started = time.perf_counter()
            row.seconds = None
        elif status in ("done", "failed", "interrupted") and row.started is not None:
            row.seconds = time.perf_counter() - row.started
        row.status, row.detail = status, detail

    @staticmethod
    def _took(row: _Row) -> str:
        return f" [{row.seconds:.1f} s]" if row.seconds is not None and row.status in ("done", "failed", "interrupted") else ""

    def _emit(self, line: str) -> None:
        log.info(line)
        if self._live is None:
            self.console.print(line, highlight=False, markup=False)

    def _render(self) -> Table:
        table = Table(title=self.title, title_justify="left", show_edge=False, box=None, pad_edge=False)
        table.add_column("", width=1)
        table.add_column("stage / job")
        table.add_column("state")
        table.add_column("time", justify="right")
        table.add_column("detail", overflow="fold")
        now = time.perf_counter()
        for row in self.rows.values():
            self._add(table, row, now, indent="")
            for job in row.jobs.values():
                self._add(table, job, now, indent="  └ ")
        return table

    @staticmethod
    def _add(table: Table, row: _Row, now: float, indent: str) -> None:
        style = _STYLES.get(row.status, "")
        if row.seconds is not None:
            elapsed = f"{row.seconds:.1f} s"
        elif row.status == "running" and row.started is not None:
            elapsed = f"{now - row.started:.0f} s"
        else:
            elapsed = ""
        name = Text(indent + row.name, style="bold" if not indent else "")
        table.add_row(Text(_MARKS.get(row.status, " "), style=style), name, Text(row.status, style=style), elapsed, row.detail)
