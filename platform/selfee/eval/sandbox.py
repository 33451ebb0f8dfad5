"""Running a model's program against its tests without letting it hang or harm the job.

Each run is a fresh ``python -I -S`` process in a temporary directory of its own, in a new
session, with a wall-clock limit after which its whole process group is killed (and it is
killed at the end in any case). Before any of the program's code runs, a small harness:

- sets resource limits: address space (memory), CPU seconds, file size (its output is
  written to files, so a program that prints without end stops at the cap), open files,
  processes, no core dumps;
- cuts the network: a new network namespace with no interfaces up (as root, or where
  unprivileged user namespaces are allowed);
- as root, drops to ``nobody`` (the directory is handed to it), so the OS refuses writes
  anywhere else and the process limit applies;
- installs an audit hook (PEP 578) that refuses what a test program never needs: forking or
  running programs, sockets, signals to other processes, ``ctypes``, and writing, removing
  or renaming anything outside its directory.

Success is reported by the harness, after the last test, on a pipe and with a one-time
token: a program that exits early (``sys.exit(0)``, ``os._exit``) before its tests ran fails.
This guards the machine and the job, not the score against a program written to cheat it.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from selfee.config import StageConfig

NOBODY = 65534


class SandboxLimits(StageConfig):
    """Limits for each program run (``selfee eval --task code``)."""

    time_s: float = Field(10.0, gt=0, le=600, description="wall-clock seconds per program run")
    memory_mb: int = Field(512, ge=64, description="address space of the program, MiB")
    output_kb: int = Field(1024, ge=1, description="stdout and stderr, KiB each")
    processes: int = Field(64, ge=1, description="processes and threads (applied as nobody)")
    python: str | None = Field(
        None, description="the interpreter programs run with (empty: this one); as root, "
        "programs run as nobody when its standard library is readable by everyone",
    )  # fmt: skip


@dataclass(frozen=True)
class CodeTests:
    """The tests of one task: assert statements (MBPP: all must pass, after ``setup``), or
    stdin/stdout pairs (CodeContests: each output must match, whitespace aside)."""

    asserts: tuple[str, ...] = ()
    setup: str = ""
    io: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_gold(cls, gold: Any) -> CodeTests | None:
        """A question's ``gold`` for code: a list of asserts, ``{"tests", "setup"}`` or
        ``{"io": [{"input", "output"}]}``; None when it is none of those."""
        if isinstance(gold, list) and gold and all(isinstance(t, str) for t in gold):
            return cls(asserts=tuple(gold))
        if not isinstance(gold, dict):
            return None
        tests, io = gold.get("tests"), gold.get("io")
        if isinstance(tests, list) and tests and all(isinstance(t, str) for t in tests):
            setup = gold.get("setup") or ""
            return cls(asserts=tuple(tests), setup=setup if isinstance(setup, str) else "")
        if isinstance(io, list) and io and all(
            isinstance(c, dict) and isinstance(c.get("input"), str)
            and isinstance(c.get("output"), str) for c in io
        ):  # fmt: skip
            return cls(io=tuple((c["input"], c["output"]) for c in io))
        return None

    def to_gold(self) -> dict[str, Any]:
        if self.io:
            return {"io": [{"input": i, "output": o} for i, o in self.io]}
        return {"tests": list(self.asserts), "setup": self.setup}


@dataclass(frozen=True)
class RunResult:
    passed: bool
    tests_passed: int
    tests: int
    reason: str  # "passed", "failed", "error", "timeout", "killed"
    detail: str  # the first failure, shortened
    seconds: float


# The harness: our code, run first in the child. Arguments: the limits and paths as JSON.
_HARNESS = r"""
import json, os, sys, resource
spec = json.loads(sys.argv[1])
token = b""
while not token.endswith(b"\n"):  # byte by byte: what follows is the program's stdin
    byte = os.read(0, 1)
    if not byte:
        break
    token += byte
token = token.decode().strip()
report_fd = spec["report_fd"]
home = os.path.realpath(spec["home"])
def _limit(kind, value):
    try:
        resource.setrlimit(kind, (value, value))
    except (ValueError, OSError):
        pass
mb = 1024 * 1024
_limit(resource.RLIMIT_AS, spec["memory_mb"] * mb)
_limit(resource.RLIMIT_CPU, spec["cpu_s"])
_limit(resource.RLIMIT_FSIZE, spec["output_kb"] * 1024)
_limit(resource.RLIMIT_NOFILE, 64)
_limit(resource.RLIMIT_CORE, 0)
_limit(resource.RLIMIT_NPROC, spec["processes"])
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
if os.geteuid() == 0:
    network = libc.unshare(CLONE_NEWNET) == 0
    if spec["nobody"] is not None:
        os.setgroups([])
        os.setgid(spec["nobody"])
        os.setuid(spec["nobody"])
else:
    network = libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0
del libc, ctypes
for name in [m for m in sys.modules if m.split(".")[0] in ("ctypes", "_ctypes")]:
    del sys.modules[name]
BLOCKED = {"os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
           "os.startfile", "subprocess.Popen", "pty.spawn", "os.kill", "os.killpg",
           "signal.pthread_kill", "socket.__new__", "socket.connect", "socket.bind",
           "socket.getaddrinfo", "socket.gethostbyname", "socket.sendto", "socket.sendmsg"}
PATHS = {"os.remove": 0, "os.rename": (0, 1), "os.rmdir": 0, "os.mkdir": 0, "os.chmod": 0,
         "os.chown": 0, "os.link": (0, 1), "os.symlink": (0, 1), "os.truncate": 0,
         "os.utime": 0, "shutil.rmtree": 0, "os.chdir": 0}
NO_IMPORT = ("ctypes", "_ctypes", "_posixsubprocess", "multiprocessing", "_multiprocessing")
WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
def _inside(path):
    if isinstance(path, int):
        return True
    try:
        full = os.path.realpath(os.fsdecode(path))
    except (TypeError, ValueError):
        return False
    return full == home or full.startswith(home + os.sep)
def _hook(event, args):
    if event in BLOCKED:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "import" and args[0].split(".")[0] in NO_IMPORT:
        raise PermissionError(f"sandbox: import {args[0]} is not allowed")
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & WRITE)
        if writing and not _inside(path):
            raise PermissionError(f"sandbox: writing {path} is not allowed")
    where = PATHS.get(event)
    if where is not None:
        for i in (where if isinstance(where, tuple) else (where,)):
            if i < len(args) and not _inside(args[i]):
                raise PermissionError(f"sandbox: {event} {args[i]} is not allowed")
sys.addaudithook(_hook)
del _hook
def _report(**fields):
    os.write(report_fd, (json.dumps({"token": token, "network_cut": network, **fields}) + "\n").encode())
import traceback
def _short(exc):
    lines = traceback.format_exception_only(type(exc), exc)
    return lines[-1].strip()[:300]
source = open(os.path.join(home, "solution.py"), encoding="utf-8").read()
scope = {"__name__": "__main__" if spec["io"] else "solution", "__builtins__": __builtins__}
passed, first_failure = 0, ""
try:
    exec(compile(spec["setup"] + "\n" + source, "solution.py", "exec"), scope)
except SystemExit as e:
    if not spec["io"]:
        _report(ran=False, passed=0, failure=f"the program exited ({e.code!r}) before its tests ran")
        raise
except BaseException as e:
    _report(ran=False, passed=0, failure=_short(e))
    raise
if not spec["io"]:
    for test in spec["asserts"]:
        try:
            exec(compile(test, "test", "exec"), scope)
            passed += 1
        except SystemExit as e:
            first_failure = first_failure or f"{test[:120]}: the program exited ({e.code!r})"
            break
        except BaseException as e:
            first_failure = first_failure or f"{test[:120]}: {_short(e)}"
sys.stdout.flush()
_report(ran=True, passed=passed, failure=first_failure)
"""


@functools.cache
def _nobody_can_run(python: str) -> bool:
    """Whether ``nobody`` can read ``python``'s standard library (a Python installed under
    /root cannot be used by it: then programs keep the user and rely on the audit hook)."""
    if os.geteuid() != 0:
        return False
    try:
        found = subprocess.run([python, "-I", "-S", "-c", "import os; print(os.__file__)"],
                               capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return False
    path = Path(found.stdout.strip()).resolve()
    dirs = [p for p in path.parents]
    return bool(path.stat().st_mode & stat.S_IROTH) and all(
        d.stat().st_mode & stat.S_IXOTH for d in dirs
    )


def run_program(code: str, tests: CodeTests, limits: SandboxLimits | None = None) -> RunResult:
    """Run ``code`` against ``tests``; never raises for anything the program does."""
    limits = limits or SandboxLimits()
    started = time.monotonic()
    if tests.io:
        total, passed, detail = len(tests.io), 0, ""
        for n, (given, wanted) in enumerate(tests.io, 1):
            one = _run_once(code, tests.setup, (), given, limits)
            if one.reason == "passed" and _same_output(one.stdout, wanted):
                passed += 1
                continue
            detail = detail or (
                f"case {n}: {one.detail}" if one.reason != "passed"
                else f"case {n}: printed {one.stdout[:80]!r}, expected {wanted[:80]!r}"
            )  # fmt: skip
            if one.reason in ("timeout", "killed"):
                return RunResult(False, passed, total, one.reason, detail, _since(started))
        ok = passed == total
        return RunResult(ok, passed, total, "passed" if ok else "failed", detail, _since(started))
    one = _run_once(code, tests.setup, tests.asserts, "", limits)
    total = len(tests.asserts)
    ok = one.reason == "passed" and one.tests_passed == total
    reason = "passed" if ok else ("failed" if one.reason == "passed" else one.reason)
    return RunResult(ok, one.tests_passed, total, reason, one.detail, _since(started))


def _since(started: float) -> float:
    return round(time.monotonic() - started, 3)


def _same_output(got: str, wanted: str) -> bool:
    return got.split() == wanted.split()


@dataclass(frozen=True)
class _Once:
    reason: str
    tests_passed: int
    detail: str
    stdout: str


def _run_once(
    code: str, setup: str, asserts: tuple[str, ...], stdin: str, limits: SandboxLimits
) -> _Once:
    home = tempfile.mkdtemp(prefix="selfee-sandbox-")
    read_fd, write_fd = os.pipe()
    token = secrets.token_hex(16)
    try:
        with open(os.path.join(home, "solution.py"), "w", encoding="utf-8") as f:
            f.write(code)
        python = limits.python or sys.executable
        as_nobody = _nobody_can_run(python)
        if as_nobody:
            os.chown(home, NOBODY, NOBODY)
            os.chown(os.path.join(home, "solution.py"), NOBODY, NOBODY)
        spec = {
            "home": home, "report_fd": write_fd, "memory_mb": limits.memory_mb,
            "cpu_s": int(limits.time_s) + 1, "output_kb": limits.output_kb,
            "processes": limits.processes, "nobody": NOBODY if as_nobody else None, "setup": setup,
            "asserts": list(asserts), "io": bool(stdin) or not asserts,
        }  # fmt: skip
        with open(os.path.join(home, ".stdout"), "w+b") as out, \
                open(os.path.join(home, ".stderr"), "w+b") as err:  # fmt: skip
            proc = subprocess.Popen(
                [python, "-I", "-S", "-c", _HARNESS, json.dumps(spec)],
                stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=home, pass_fds=(write_fd,),
                env={"PATH": "/usr/bin:/bin", "HOME": home, "TMPDIR": home, "LANG": "C.UTF-8",
                     "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0"},
                start_new_session=True,
            )  # fmt: skip
            os.close(write_fd)
            write_fd = -1
            timed_out = False
            try:
                proc.communicate((token + "\n" + stdin).encode(), timeout=limits.time_s)
            except subprocess.TimeoutExpired:
                timed_out = True
            finally:
                _kill_group(proc)
            report = _read_report(read_fd, token)
            out.seek(0)
            stdout = out.read(limits.output_kb * 1024).decode("utf-8", "replace")
            err.seek(0)
            stderr = err.read(limits.output_kb * 1024).decode("utf-8", "replace")
    finally:
        if write_fd >= 0:
            os.close(write_fd)
        os.close(read_fd)
        shutil.rmtree(home, ignore_errors=True)
    if timed_out:
        return _Once("timeout", 0, f"no result within {limits.time_s:g} s", stdout)
    if report is None:
        return _Once("killed" if proc.returncode < 0 else "error", 0,
                     _why_no_report(proc.returncode, stderr), stdout)  # fmt: skip
    failure = str(report.get("failure") or "")
    if not report.get("ran"):  # the program itself failed before its tests
        return _Once("error", 0, failure, stdout)
    return _Once("passed", int(report.get("passed", 0)), failure, stdout)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _read_report(fd: int, token: str) -> dict[str, Any] | None:
    os.set_blocking(fd, False)
    chunks = []
    try:
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            if sum(map(len, chunks)) > 1 << 20:
                break
    except BlockingIOError:
        pass
    for line in reversed(b"".join(chunks).decode("utf-8", "replace").splitlines()):
        try:
            report = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(report, dict) and report.get("token") == token:
            return report
    return None


def _why_no_report(returncode: int, stderr: str) -> str:
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else ""
        hint = {"SIGXCPU": "CPU time limit", "SIGXFSZ": "output limit",
                "SIGKILL": "killed", "SIGSEGV": "crashed"}.get(name, name)  # fmt: skip
        return f"ended by {name or -returncode} ({hint})"
    last = stderr.strip().splitlines()[-1:] or [f"exit status {returncode}"]
    return f"ended without running its tests: {last[0][:300]}"
