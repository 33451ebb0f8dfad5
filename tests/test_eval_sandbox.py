"""The code sandbox: hostile programs fail within their limits and harm nothing; honest ones
pass. Run with this Python (as root here: the audit hook and namespaces) and with the
system Python (whose standard library nobody can read: the program runs as nobody)."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from selfee.eval.sandbox import CodeTests, SandboxLimits, _nobody_can_run, run_program

SQUARE = CodeTests(asserts=("assert f(2) == 4", "assert f(3) == 9"))
GOOD = "def f(x):\n    return x * x\n"
SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.fixture(params=["this-python", "system-python"])
def limits(request: pytest.FixtureRequest) -> SandboxLimits:
    python = sys.executable if request.param == "this-python" else SYSTEM_PYTHON
    return SandboxLimits(time_s=3, memory_mb=256, python=python)


def test_the_system_python_runs_programs_as_nobody() -> None:
    """The second setting exercises the drop to nobody (this machine runs tests as root)."""
    assert os.path.exists(SYSTEM_PYTHON), "the tests expect the image's /usr/bin/python3"
    if os.geteuid() == 0:
        assert _nobody_can_run(SYSTEM_PYTHON)
        check = "import os\nassert os.getuid() == 65534\n" + GOOD
        assert run_program(check, SQUARE, SandboxLimits(python=SYSTEM_PYTHON)).passed


def test_a_correct_program_passes_and_a_wrong_one_fails(limits: SandboxLimits) -> None:
    assert run_program(GOOD, SQUARE, limits).passed
    wrong = run_program("def f(x):\n    return x + 2\n", SQUARE, limits)
    assert not wrong.passed and wrong.tests_passed == 1 and "f(3) == 9" in wrong.detail
    broken = run_program("def f(x) return", SQUARE, limits)
    assert broken.reason == "error" and "SyntaxError" in broken.detail
    setup = CodeTests(asserts=("assert f(K) == 49",), setup="K = 7")
    assert run_program(GOOD, setup, limits).passed


def test_an_infinite_loop_is_killed_at_the_time_limit(limits: SandboxLimits) -> None:
    started = time.monotonic()
    result = run_program("while True:\n    pass\n", SQUARE, limits)
    assert result.reason == "timeout" and not result.passed
    assert time.monotonic() - started < limits.time_s + 2


def test_a_fork_bomb_fails_at_once(limits: SandboxLimits) -> None:
    for bomb in ("import os\nwhile True:\n    os.fork()\n",
                 "import subprocess\nsubprocess.Popen(['sleep', '100'])\n",
                 "import os\nos.system('sleep 100 &')\n",
                 "import multiprocessing\n"):  # fmt: skip
        started = time.monotonic()
        result = run_program(bomb, SQUARE, limits)
        assert not result.passed and result.reason == "error", (bomb, result)
        assert time.monotonic() - started < limits.time_s


def test_a_memory_hog_fails_within_the_limit(limits: SandboxLimits) -> None:
    for hog in ("x = bytearray(10**10)\n", "a = []\nwhile True:\n    a.append(b'x' * 10**7)\n"):
        result = run_program(hog, SQUARE, limits)
        assert not result.passed and "MemoryError" in result.detail, result


def test_no_connection_leaves_the_sandbox(limits: SandboxLimits) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    port = server.getsockname()[1]
    accepted = []

    def accept() -> None:
        deadline = time.monotonic() + limits.time_s + 2
        while time.monotonic() < deadline:
            try:
                accepted.append(server.accept())
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept)
    thread.start()
    programs = [
        f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n",
        f"import socket\ns = socket.socket()\ns.connect(('127.0.0.1', {port}))\n",
        "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=1)\n",
    ]
    results = [run_program(p, SQUARE, limits) for p in programs]
    thread.join()
    server.close()
    assert not accepted
    assert all(not r.passed and r.reason == "error" for r in results), results


def test_nothing_is_written_outside_its_folder(limits: SandboxLimits, tmp_path: Path) -> None:
    target = tmp_path / "escaped.txt"
    programs = [
        f"open({str(target)!r}, 'w').write('x')\n",
        f"import os\nos.open({str(target)!r}, os.O_CREAT | os.O_WRONLY)\n",
        f"import pathlib\npathlib.Path({str(target)!r}).write_text('x')\n",
        f"import shutil\nshutil.rmtree({str(tmp_path)!r})\n",
        f"import os\nos.remove({str(Path(__file__))!r})\n",
    ]
    for program in programs:
        result = run_program(program, SQUARE, limits)
        assert not result.passed and result.reason == "error", (program, result)
    assert not target.exists() and tmp_path.is_dir() and Path(__file__).exists()
    inside = "open('scratch.txt', 'w').write('x')\n" + GOOD  # its own folder is fine
    assert run_program(inside, SQUARE, limits).passed


def test_exiting_before_the_tests_ran_is_a_failure(limits: SandboxLimits) -> None:
    for early in ("import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n", "raise SystemExit\n"):
        result = run_program(early + GOOD, SQUARE, limits)
        assert not result.passed, (early, result)


def test_endless_output_stops_at_the_cap(limits: SandboxLimits) -> None:
    result = run_program("while True:\n    print('x' * 1000)\n", SQUARE, limits)
    assert not result.passed and result.reason in ("error", "killed"), result


def test_stdin_stdout_cases(limits: SandboxLimits) -> None:
    cases = CodeTests(io=(("1 2\n", "3\n"), ("5 5\n", "10")))
    adder = "a, b = map(int, input().split())\nprint(a + b)\n"
    assert run_program(adder, cases, limits).passed
    reads_all = "import sys\na, b = map(int, sys.stdin.read().split())\nprint(a + b)\nsys.exit(0)\n"
    assert run_program(reads_all, cases, limits).passed
    wrong = run_program("print(3)\n", cases, limits)
    assert not wrong.passed and wrong.tests_passed == 1 and "case 2" in wrong.detail
    slow = run_program("while True:\n    pass\n", cases, limits)
    assert slow.reason == "timeout"


def test_gold_formats() -> None:
    assert CodeTests.from_gold(["assert 1"]) == CodeTests(asserts=("assert 1",))
    assert CodeTests.from_gold({"tests": ["assert 1"], "setup": "x = 1"}).setup == "x = 1"  # type: ignore[union-attr]
    assert CodeTests.from_gold({"io": [{"input": "", "output": "1"}]}).io == (("", "1"),)  # type: ignore[union-attr]
    for bad in ([], "assert 1", {"tests": []}, {"io": [{"input": 1}]}, None, [1]):
        assert CodeTests.from_gold(bad) is None
