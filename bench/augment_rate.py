"""Augmentation against a rate-limited endpoint: how much of the limit the job uses.

    .venv/bin/python bench/augment_rate.py                      # R = 600, 3000; 1 and 4 workers
    .venv/bin/python bench/augment_rate.py --rpm 600 --workers 1 --seconds 30

The offline teacher runs as its own process with ``--rpm R`` enforced server-side (429 over
it, sliding 60 s window) and 200 ms latency per request. The real augment job (embedded Ray,
Ray Data workers) runs enough rows to keep it busy for ``--seconds``; the teacher's /stats
give the achieved request rate (first to last request) and the 429 count. A second part
measures the client CPU time per request: the bare ``openai`` SDK against our TeacherCall
(limiter + retry wrapper). Figures are appended to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import openai
import ray

from results import append_rows, machine
from selfee.augment.config import AugmentConfig
from selfee.augment.job import run_augment
from selfee.config import RayConfig
from selfee.llm import Secret, TeacherCall
from selfee.ratelimit import RateLimiter, WorkerShare
from selfee.records import make_instruction, write_jsonl

REQUESTS_PER_ROW = 3.2  # answer + critique, plus revisions for about half (offline teacher)


class Teacher:
    """``selfee teacher`` in its own process, so its CPU is not the client's."""

    def __init__(self, *options: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "selfee.cli", "teacher", "--port", "0", *options],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        line = self.proc.stdout.readline()  # "offline teacher listening on http://HOST:PORT/v1"
        self.base_url = line.split()[-1]
        self.url = self.base_url.removesuffix("/v1")

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/stats", timeout=10).json()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def rate_run(rpm: int, workers: int, seconds: float, tmp: Path, factor: float = 2) -> dict:
    teacher = Teacher("--rpm", str(rpm), "--latency-ms", "200", "--needed-fraction", "0.5",
                      "--later-needed-fraction", "0.25")  # fmt: skip
    try:
        rows = math.ceil(rpm * seconds / 60 / REQUESTS_PER_ROW)
        path = tmp / f"in-{rpm}-{workers}.jsonl"
        write_jsonl(path, [make_instruction("alpaca", f"Explain idea {i}.") for i in range(rows)])
        # rows in flight: ``factor`` times what 200 ms latency needs at the full rate
        in_flight = math.ceil(rpm / 60 * 0.2 * factor) + 2 * workers
        cfg = AugmentConfig(
            input=path,
            output=tmp / f"out-{rpm}-{workers}",
            base_url=teacher.base_url,
            model="offline-teacher",
            rpm=rpm,
            workers=workers,
            concurrency=in_flight,
            worker_cpus=0.25,
            progress_interval_s=15,
            ray=RayConfig(),
        )
        started = time.perf_counter()
        summary = run_augment(cfg)
        wall = time.perf_counter() - started
        stats = teacher.stats()
    finally:
        teacher.close()
    span = stats["last_request_at"] - stats["first_request_at"]
    achieved = (stats["received"] - 1) / span * 60
    return {
        "rpm": rpm,
        "workers": workers,
        "rows": rows,
        "in_flight": in_flight,
        "requests": stats["received"],
        "span_s": span,
        "wall_s": wall,
        "achieved": achieved,
        "fraction": achieved / rpm,
        "max_60s": stats["max_requests_in_any_60s"],
        "rate_limited": stats["rate_limited"],
        "errors": summary["errors"],
    }


async def cpu_per_request(base_url: str, n: int, wrapped: bool) -> float:
    client = openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": "Give two tips for better sleep."}]
    call = TeacherCall(client, "offline-teacher", RateLimiter(WorkerShare(None, None)), Secret("x"))
    await client.chat.completions.create(model="m", messages=messages)  # warm the connection
    started = time.process_time()
    for _ in range(n):
        if wrapped:
            await call.chat(messages)
        else:
            await client.chat.completions.create(model="m", messages=messages, max_tokens=1024)
    used = time.process_time() - started
    await client.close()
    return used / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpm", type=int, nargs="+", default=[600, 3000])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--seconds", type=float, default=90, help="target length of each run")
    parser.add_argument("--in-flight-factor", type=float, default=2.0,
                        help="rows in flight as a multiple of rate x latency")  # fmt: skip
    parser.add_argument("--cpu-requests", type=int, default=500)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for rpm in args.rpm:
            for workers in args.workers:
                result = rate_run(rpm, workers, args.seconds, Path(tmp), args.in_flight_factor)
                print(result, flush=True)
                results.append(result)
    ray.shutdown()

    teacher = Teacher()
    try:
        sdk = asyncio.run(cpu_per_request(teacher.base_url, args.cpu_requests, wrapped=False))
        ours = asyncio.run(cpu_per_request(teacher.base_url, args.cpu_requests, wrapped=True))
    finally:
        teacher.close()
    print(f"client CPU per request: SDK {sdk * 1e3:.2f} ms, TeacherCall {ours * 1e3:.2f} ms")

    today = datetime.date.today()
    rows = [
        f"| {today} | {machine()} | {r['rpm']} | {r['workers']} | {r['in_flight']} | {r['rows']} | {r['requests']} "
        f"| {r['span_s']:.1f} s | {r['achieved']:.0f}/min | **{r['fraction']:.3f}** "
        f"| {r['max_60s']} | {r['rate_limited']} | {r['errors']} |"
        for r in results
    ]
    section = (
        "\n## Augmentation against a rate limit (`bench/augment_rate.py`)\n\n"
        "Offline teacher in its own process: server-side limit R requests/min (sliding 60 s "
        "window, 429 over it), 200 ms latency. Achieved = requests / (last - first request).\n\n"
        "| date | machine | R (rpm) | workers | rows in flight | rows | requests | span | "
        "achieved | fraction of R | max in any 60 s | 429s | error rows |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    cpu_section = (
        "\n## Client CPU per request (`bench/augment_rate.py`)\n\n"
        "| date | machine | openai SDK alone | TeacherCall (limiter + retries + usage) |\n"
        "|---|---|---|---|\n"
    )
    cpu_row = f"| {today} | {machine()} | {sdk * 1e3:.2f} ms | {ours * 1e3:.2f} ms |"
    if not args.no_write:
        append_rows(section, rows)
        append_rows(cpu_section, [cpu_row])
    print("\n".join([*rows, cpu_row]))


if __name__ == "__main__":
    main()
