"""Live progress from a stage, wherever it runs, to whoever watches it; and one-line stage summaries.

A stage's long loops (training steps, generated samples, scored traces) call `report(...)`. In a stage's
child process (components/runtime/isolation.py) each report is a JSON line appended to the file named by
$VSTAR_PROGRESS, at most a few per second; the parent follows that file and hands each `Event` (and
None as a tick, 4 times a second) to a watcher: a rich progress bar on a terminal, a plain line every few seconds in a log or CI
(`watcher`), plus Prefect's progress artifact for the task run (tasks/common.py). In a process with no
$VSTAR_PROGRESS (light stages, tests) `report` does nothing: it must cost nothing in a hot loop.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

ENV = "VSTAR_PROGRESS"
MIN_INTERVAL_S = 0.5  # between two reports of one bar from the child: the file stays small
PLAIN_EVERY_S = 5.0  # between two plain lines: "moves at least every few seconds", without flooding a log


@dataclass
class Event:
    what: str  # the bar: "steps", "samples", "traces"
    done: int
    total: int | None
    elapsed: float  # seconds since this bar started
    figures: dict = field(default_factory=dict)  # loss, tok/s, ...

    @property
    def finished(self) -> bool:
        return self.total is not None and self.done >= self.total

    def eta(self) -> float | None:
        if not self.total or self.done <= 0 or self.elapsed <= 0:
            return None
        return (self.total - self.done) * self.elapsed / self.done

    def text(self) -> str:
        """'1,200/4,800 samples 25%  47.1/s  ETA 1m 16s  loss 0.512  6.1k tok/s'"""
        parts = [f"{self.done:,}/{self.total:,} {self.what} {100 * self.done / self.total:.0f}%" if self.total
                 else f"{self.done:,} {self.what}"]
        if self.elapsed > 0 and self.done:
            parts.append(f"{self.done / self.elapsed:,.1f}/s")
        eta = None if self.finished else self.eta()
        if eta is not None:
            parts.append(f"ETA {duration(eta)}")
        parts += [_figure(k, v) for k, v in self.figures.items()]
        return "  ".join(parts)


def _figure(name: str, value) -> str:
    if name == "tok/s":
        return f"{value / 1000:.1f}k tok/s" if value >= 1000 else f"{value:.0f} tok/s"
    return f"{name} {value:.3g}" if isinstance(value, float) else f"{name} {value}"


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds} s"


# --------------------------------------------------------------------------- the reporting side

class _Reporter:
    def __init__(self, path: str):
        self.path = path
        self.started: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.last_done: dict[str, int] = {}

    def __call__(self, what: str, done: int, total: int | None, figures: dict) -> None:
        now = time.monotonic()
        if what not in self.started or done < self.last_done.get(what, 0):  # a new bar (e.g. the next generate call)
            self.started[what], self.last[what] = now, 0.0
        self.last_done[what] = done
        if now - self.last[what] < MIN_INTERVAL_S and done != 0 and (total is None or done < total):
            return
        self.last[what] = now
        event = {"what": what, "done": done, "total": total, "elapsed": round(now - self.started[what], 3),
                 "figures": figures}
        with open(self.path, "a") as f:  # one short line, one write: the reader never sees half of it
            f.write(json.dumps(event) + "\n")


_reporter: _Reporter | None = None


def active() -> bool:
    """Whether anyone follows this process's progress (a stage's child process)."""
    return bool(os.environ.get(ENV))


def report(what: str, done: int, total: int | None = None, **figures) -> None:
    """`done` of `total` `what` so far (done=0 starts a bar). Figures: numbers shown beside the bar."""
    global _reporter
    path = os.environ.get(ENV)
    if not path:  # nobody follows: free
        return
    if _reporter is None or _reporter.path != path:
        _reporter = _Reporter(path)
    _reporter(what, int(done), None if total is None else int(total), figures)


def tqdm_class(what: str, total: int):
    """A tqdm class that reports instead of drawing: vLLM's `generate(use_tqdm=...)` takes one. vLLM
    updates it by finished samples and writes its output speed into the postfix."""
    from tqdm import tqdm

    class _Reporting(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["file"] = open(os.devnull, "w")
            super().__init__(*args, **kwargs)
            self.reporting = kwargs.get("desc") != "Rendering prompts"  # vLLM's other bar: input preparation
            if self.reporting:
                report(what, 0, total)

        def update(self, n=1):
            out = super().update(n)
            if self.reporting:
                figures = {}
                try:  # "est. speed input: 123.45 toks/s, output: 678.90 toks/s" (stays 0 when pooling)
                    speed = float(str(self.postfix).rsplit("output:", 1)[1].split()[0])
                    if speed > 0:
                        figures["tok/s"] = speed
                except (IndexError, ValueError):
                    pass
                report(what, self.n, total, **figures)
            return out

        def close(self):
            super().close()
            self.fp.close()

    return _Reporting


# --------------------------------------------------------------------------- the watching side

def follow(path: str, offset: int) -> tuple[list[Event], int]:
    """The complete event lines written to `path` after byte `offset`, and the new offset."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read()
    except FileNotFoundError:
        return [], offset
    end = chunk.rfind(b"\n") + 1  # a line still being written waits for the next call
    events = [Event(**json.loads(line)) for line in chunk[:end].splitlines() if line.strip()]
    return events, offset + end


class PlainWatcher:
    """For logs and CI: a line every PLAIN_EVERY_S (the stage's time so far and its latest progress,
    "starting" before the first report) and one whenever a bar finishes. Called with None as a tick."""

    def __init__(self, stage: str, emit: Callable[[str], None]):
        self.stage, self.emit = stage, emit
        self.t0 = self.last = time.monotonic()
        self.latest: Event | None = None

    def __call__(self, event: Event | None) -> None:
        now = time.monotonic()
        if event is not None:
            self.latest = event
        if (event is not None and event.finished) or now - self.last >= PLAIN_EVERY_S:
            self.emit(f"{self.stage} {duration(now - self.t0)}: {self.latest.text() if self.latest else 'starting'}")
            self.last = now

    def close(self) -> None:
        pass


class RichWatcher:
    """Rich progress bars on a terminal: one per bar of the stage, redrawn in place when the same bar
    starts again (the next generate call); a "starting" line until the first report."""

    def __init__(self, stage: str):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.stage = stage
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[text]}"),
                                 TimeElapsedColumn(), transient=False)
        self.tasks: dict[str, int] = {"starting": self.progress.add_task(f"{stage} starting", total=None, text="")}
        self.done: dict[str, int] = {}
        self.progress.start()

    def __call__(self, event: Event | None) -> None:
        if event is None:  # a tick: the elapsed column moves by itself
            return
        if "starting" in self.tasks:
            self.progress.remove_task(self.tasks.pop("starting"))
        task = self.tasks.get(event.what)
        if task is None:
            task = self.tasks[event.what] = self.progress.add_task(f"{self.stage} {event.what}", total=event.total,
                                                                   text="")
        elif event.done < self.done[event.what]:
            self.progress.reset(task, total=event.total)
        self.done[event.what] = event.done
        self.progress.update(task, completed=event.done, total=event.total, text=event.text())

    def close(self) -> None:
        self.progress.stop()


def watcher(stage: str, emit: Callable[[str], None], tty: bool | None = None):
    """Bars on a terminal, plain lines (through `emit`) anywhere else."""
    tty = sys.stdout.isatty() if tty is None else tty
    return RichWatcher(stage) if tty else PlainWatcher(stage, emit)


# --------------------------------------------------------------------------- stage summaries

def summary(stage: str, metrics: dict, fields: tuple[str, ...], seconds: float) -> str:
    """`generate  4800 traces  65.6% correct  6.0k tok/s  41 s`: the stage's `fields` (format strings
    over its metrics; one whose metrics are missing is left out; none: a few integer metrics), then
    the wall time."""
    parts = [] if fields else [f"{k} {v:,}" for k, v in metrics.items() if isinstance(v, int)][:4]
    for fmt in fields:
        try:
            parts.append(fmt.format_map(_Metrics(metrics)))
        except (KeyError, TypeError, ValueError):
            pass
    return "  ".join([f"{stage:<13}", *parts, duration(seconds)])


class _Metrics(dict):
    """Format keys as given ("{quality/mc/f1:.2f}" reads metrics["quality/mc/f1"]); a "k_" prefix
    divides by 1000 ("{k_tokens_per_s:.1f}k tok/s")."""

    def __getitem__(self, key):
        if key.startswith("k_"):
            return dict.__getitem__(self, key[2:]) / 1000
        return dict.__getitem__(self, key)
