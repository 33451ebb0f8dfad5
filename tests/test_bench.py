"""The benchmarks keep running: one, on the tests' model and a short length, writing its
rows to a file of its own (``$SELFEE_BENCH_RESULTS``), not to bench/RESULTS.md."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("engine", ["hf", "llama_cpp"])
def test_revision_speed_measures_forced_rewrites(
    selfee_model_dir: Path, tmp_path: Path, engine: str
) -> None:
    results = tmp_path / "RESULTS.md"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "revision_speed.py"), "--model",
         str(selfee_model_dir), "--lengths", "300", "--repeats", "1", "--engine", engine],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "SELFEE_BENCH_RESULTS": str(results)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split(" | ") for line in results.read_text().splitlines()
            if line.startswith("| 20")]  # fmt: skip
    assert len(rows) == 1
    model, tokens, rewrites = rows[0][2:5]
    # the model by architecture and size (0.2M parameters), not by its folder's name
    assert re.search(rf"llama 0\.\dM \({re.escape(str(selfee_model_dir))}\)$", model), model
    assert tokens == "300" and int(rewrites) >= 2  # the verdicts rewritten
    assert "overhead" in done.stdout


def test_rows_name_the_processor(tmp_path: Path) -> None:
    """Two machines both "x86_64, 2 cores" ran at twice each other's speed: rows say which."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from results import cpu_name
    finally:
        sys.path.remove(str(ROOT / "bench"))
    cpuinfo = tmp_path / "cpuinfo"
    for flags, name, expected in [
        (
            "fpu avx2 avx512f amx_tile",
            "Intel(R) Xeon(R)  Platinum",
            "Intel(R) Xeon(R) Platinum (AMX)",
        ),
        ("fpu avx2 avx512f", "Intel(R) Xeon(R) Gold", "Intel(R) Xeon(R) Gold (AVX512)"),
        ("fpu sse avx2", "AMD EPYC", "AMD EPYC (AVX2)"),
        ("fpu sse", "AMD EPYC", "AMD EPYC"),
    ]:
        cpuinfo.write_text(f"processor\t: 0\nmodel name\t: {name}\nflags\t\t: {flags}\n\n" * 2)
        assert cpu_name(cpuinfo) == expected
    assert cpu_name(tmp_path / "absent") == ""
