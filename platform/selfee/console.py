"""What a user sees: our lines on the console, everything the libraries print in a log file.

A batch stage (``selfee collect|augment|train|export|infer|judge|eval|quickstart``) runs
inside ``quiet_run``: the process's stdout and stderr — file descriptors 1 and 2, so the
C++ logs of Ray's core worker, Python warnings and every library's logging too — go to one
log file per run, named when the run starts and again in any error. Of what is printed,
the lines a stage writes as ``[stage] ...`` (its progress and summary, also those Ray
forwards from our workers, such as the training steps) reach the console too, on the
stream they were written to, and so does what ``say`` writes (tables, ``--json``: stdout)
and ``note`` (stderr); everything else only the log.
``--verbose`` leaves the console as it is.

Where stdout is not the process's own (pytest's capture, a notebook) nothing is
redirected: ``say`` prints as ``print`` would.
"""

from __future__ import annotations

import datetime
import io
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

LOG_DIR_ENV = "SELFEE_LOG_DIR"
DEFAULT_LOG_DIR = Path("outputs/logs")
STAGES = ("collect", "augment", "train", "export", "infer", "judge", "eval", "quickstart")
# "[infer] ...", also as Ray forwards it from a worker: "(RayTrainWorker pid=7) [train] ..."
OURS_RE = re.compile(r"^(?:\x1b\[[0-9;]*m)*(?:\([^)]*pid=\d+[^)]*\)(?:\x1b\[[0-9;]*m)* )?"
                     rf"(\[(?:{'|'.join(STAGES)})\] .*)$")  # fmt: skip


# "[train] step 10/200 · loss 6.2 · ...": a step line, drawn as the stage's progress bar
STEP_RE = re.compile(r"^\[(\w+)\] step (\d+)/(\d+)(?: · (.*))?$")


class _Console:
    """The real console while a quiet run is on: stdout and stderr as they were."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out, self.err = out, err
        self.last = ""
        self.step_bars: dict[str, Any] = {}  # stage → its tqdm bar

    def line(self, text: str, stream: TextIO | None = None) -> None:
        if text == self.last:  # Ray forwards some worker lines twice
            return
        self.last = text
        if step := STEP_RE.match(text):
            self.step(*step.groups())
            return
        with tqdm.external_write_mode(file=stream or self.out):  # under any open bar
            (stream or self.out).write(text + "\n")
            (stream or self.out).flush()

    def step(self, stage: str, done: str, total: str, rest: str | None) -> None:
        """A step line as a bar (done/total, steps/s, ETA, the line's rest after it), so a
        stage that reports from Ray workers (training) gets one as the driver does."""
        bar = self.step_bars.get(stage)
        if bar is None or bar.total != int(total) or int(done) < bar.n:  # new or restarted
            self.close_bar(stage)
            bar = self.step_bars[stage] = tqdm(
                total=int(total), initial=int(done), desc=f"[{stage}] steps", unit="step",
                mininterval=0.5, ncols=130, file=self.err)  # fmt: skip
        bar.set_postfix_str(rest or "", refresh=False)
        bar.update(int(done) - bar.n)
        bar.refresh()  # step lines come seldom (every few steps): each one is drawn
        if bar.n >= bar.total:
            self.close_bar(stage)

    def close_bar(self, stage: str) -> None:
        if (bar := self.step_bars.pop(stage, None)) is not None:
            bar.close()


class _Router(io.TextIOBase):
    """The quiet run's ``sys.stdout`` (or ``sys.stderr``): every line to the log; ours to
    the same stream of the console too."""

    def __init__(self, log: TextIO, console: _Console, stream: TextIO) -> None:
        self.log, self.console, self.stream, self.pending = log, console, stream, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log.write(text)
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        for line in lines:
            match = OURS_RE.match(line.rstrip("\r"))
            if match and (_shown is None or match.group(1).startswith(_shown)):
                self.console.line(match.group(1), self.stream)
        return len(text)

    def flush(self) -> None:
        self.log.flush()

    def fileno(self) -> int:
        return self.log.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


_console: _Console | None = None
_log_path: Path | None = None
_shown: tuple[str, ...] | None = None  # inside ``details``: the line prefixes still shown


@contextmanager
def details(show: tuple[str, ...] = ()) -> Iterator[None]:
    """Stages run inside a bigger run (the quickstart): their lines and tables go to the log
    only, but for lines that start with one of ``show``."""
    global _shown
    before, _shown = _shown, show
    try:
        yield
    finally:
        _shown = before


def say(text: str) -> None:
    """Text for the user (a table, a JSON object): on the console, and in the run's log."""
    if _console is None:
        print(text, flush=True)
        return
    if isinstance(sys.stdout, _Router):
        sys.stdout.log.write(text + "\n")
    if _shown is not None:  # a detail of a bigger run
        return
    for line in text.split("\n"):
        _console.out.write(line + "\n")
    _console.out.flush()


def detail(line: str, err: bool = False) -> None:
    """A periodic progress line: in the log only while a quiet run draws a progress bar for
    it (``progress_bar``); printed as it is otherwise (to stderr with ``err``)."""
    if _console is None:
        print(line, file=sys.stderr if err else sys.stdout, flush=True)
    elif isinstance(sys.stdout, _Router):
        sys.stdout.log.write(line + "\n")


@contextmanager
def progress_bar(stage: str, what: str, total: int, unit: str) -> Iterator[Any]:
    """A tqdm bar on the console's stderr while a quiet run is on (done/total, rate, ETA;
    the caller adds tokens/s and such as its postfix); a bar that draws nothing otherwise."""
    bar = tqdm(total=total, desc=f"[{stage}] {what}", unit=unit, mininterval=0.5, ncols=110,
               file=_console.err if _console else None, disable=_console is None)  # fmt: skip
    try:
        yield bar
    finally:
        bar.close()


def note(line: str) -> None:
    """A line for the user's stderr (an error, a warning, where to look): on the console's
    stderr when quiet, and in the log."""
    if _console is None:
        print(line, file=sys.stderr, flush=True)
        return
    if isinstance(sys.stderr, _Router):
        sys.stderr.log.write(line + "\n")
    _console.line(line, _console.err)


def log_path() -> Path | None:
    """The current run's log file (None outside a quiet run)."""
    return _log_path


def new_log_path(command: str) -> Path:
    folder = Path(os.environ.get(LOG_DIR_ENV) or DEFAULT_LOG_DIR)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return folder / f"{command.replace('selfee ', '').replace(' ', '-')}-{stamp}-{os.getpid()}.log"


@contextmanager
def quiet_run(command: str, verbose: bool = False) -> Iterator[Path | None]:
    """Redirect this process's stdout/stderr to a new log file for the block (unless
    ``verbose``, or stdout is not the process's own); yields the log's path."""
    global _console, _log_path
    if verbose or _console is not None or sys.stdout is not sys.__stdout__:
        yield None
        return
    path = new_log_path(command)
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_out, saved_err = os.dup(1), os.dup(2)
    out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
    err = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    log = open(path, "a", buffering=1, encoding="utf-8", errors="replace")
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    _console, _log_path = _Console(out, err), path
    real_stdout, real_stderr = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Router(log, _console, out), _Router(log, _console, err)
    _console.line(f"{command}: log of this run: {path} (--verbose shows it all here)", err)
    try:
        yield path
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for stage in list(_console.step_bars):  # a run that ended mid-way
            _console.close_bar(stage)
        sys.stdout, sys.stderr = real_stdout, real_stderr
        os.dup2(saved_out, 1)
        os.dup2(saved_err, 2)
        for fd in (saved_out, saved_err):
            os.close(fd)
        _console, _log_path = None, None
        for stream in (out, err, log):
            stream.close()


def wait_for_ctrl_c() -> None:
    """Block until Ctrl-C (KeyboardInterrupt). Short sleeps, not one long one: the kernel may
    hand SIGINT to any of the process's threads (Ray and gRPC run many); then Python only
    sets a flag, which the main thread sees when its sleep ends (measured: a `selfee serve`
    sleeping 3600 s ignored a Ctrl-C for 10 minutes)."""
    while True:
        time.sleep(0.5)
