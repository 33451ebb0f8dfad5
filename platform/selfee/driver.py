"""The driver's side of a fan-out: finished rows come back, are saved, progress is shown.

Every job that fans rows out on Ray Data (augment and judge through ``selfee.llm_job``,
infer's and eval's model actors, eval's scoring) gets its rows back the same way: each
block's rows as JSON strings in a ``row`` column, handed one by one to the job (which
journals them at once), a progress bar on the console, a status line in the log every
``interval_s``, and on Ctrl-C a line saying how much of the run is saved.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from selfee.console import detail, progress_bar

Say = Callable[[str], None]


def drain(
    dataset: Any,
    stage: str,
    what: str,
    unit: str,
    total: int,
    on_row: Callable[[dict[str, Any]], bool],
    status: Callable[[], str],
    postfix: Callable[[], str],
    interval_s: float,
    say: Say,
    err: bool = False,
) -> None:
    """Hand every row of ``dataset`` to ``on_row`` as its block arrives; ``on_row`` returns
    True to stop after the block (the endpoint refused the job)."""
    handed = 0
    last_line = time.monotonic()
    try:
        with progress_bar(stage, what, total, unit) as bar:
            for block in dataset.iter_batches(batch_size=None, batch_format="numpy"):
                stop = False
                for text in block["row"]:
                    handed += 1
                    stop = bool(on_row(json.loads(text))) or stop
                bar.update(len(block["row"]))
                bar.set_postfix_str(postfix(), refresh=False)
                if stop:
                    break
                if time.monotonic() - last_line >= interval_s:
                    detail(f"[{stage}] {status()}", err=err)
                    last_line = time.monotonic()
    except KeyboardInterrupt:
        say(f"interrupted: {handed} {unit}s of this run are saved; re-run to continue")
        raise
    detail(f"[{stage}] {status()}", err=err)
