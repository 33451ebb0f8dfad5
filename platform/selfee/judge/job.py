"""The judge job: two answer files, every question judged in both orders, on Ray Data.

Each judgment is keyed by what decides it (judge model, the exact prompt: question, both
answers, their order, the template). Judgments with a readable score go to a cache as they
arrive, so a re-run, or a run after a crash, asks only for what is missing; failed and
unparseable judgments are never cached. The review files come out in the SelFee/FastChat
format, one per order, followed by the report.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat

from selfee import journal
from selfee.console import say
from selfee.errors import ConfigError
from selfee.judge import report
from selfee.judge.config import JudgeConfig
from selfee.judge.plan import model_name, model_names, plan, review_row
from selfee.judge.scores import parse_score
from selfee.llm import CallFailed, TeacherCall
from selfee.llm_job import LLMWorker, fan_out, preflight, resolve_endpoint
from selfee.progress import Progress
from selfee.records import write_jsonl
from selfee.stage import Stage

CACHE = "judge_cache.jsonl"


class CachedJudgment(BaseModel):
    """A cached judgment, checked before it is reused (a bad one is asked again)."""

    model_config = ConfigDict(extra="allow", strict=True)

    id: str
    text: str
    score: Annotated[list[FiniteFloat], Field(min_length=2, max_length=2)]
    error: None = None


def log(message: str) -> None:
    print(f"[judge] {message}", flush=True)


class JudgeWorker(LLMWorker):
    def __init__(self, *args: Any, unparsed_retries: int = 2, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unparsed_retries = unparsed_retries

    def call_settings(self, record: dict[str, Any]) -> dict[str, Any]:
        return {
            "temperature": float(record["temperature"]),
            "max_tokens": int(record["max_tokens"]),
        }

    async def process(self, call: TeacherCall, record: dict[str, Any]) -> dict[str, Any]:
        messages = [
            {"role": "system", "content": record["system"]},
            {"role": "user", "content": record["user"]},
        ]
        text = ""
        for attempt in range(self.unparsed_retries + 1):
            try:
                text = await call.chat(messages)
            except CallFailed as e:
                return {"id": record["id"], "text": text, "score": None, "error": str(e)}
            score = parse_score(text)
            if score is not None:
                return {"id": record["id"], "text": text, "score": list(score), "error": None,
                        "asked": attempt + 1}  # fmt: skip
        return {"id": record["id"], "text": text, "score": None, "error": None,
                "asked": self.unparsed_retries + 1}  # fmt: skip


class JudgeStage(Stage[JudgeConfig]):
    name = "judge"
    summary_file = "report.json"

    def names(self) -> tuple[str, str]:
        name_a, name_b = (model_name(p) for p in self.cfg.answers)
        return name_a, name_b

    def inputs(self) -> dict[str, Path]:
        name_a, name_b = self.names()
        return {"questions": Path(str(self.cfg.questions)), name_a: self.cfg.answers[0],
                name_b: self.cfg.answers[1]}  # fmt: skip

    def outputs(self) -> dict[str, Path]:
        name_a, name_b = self.names()
        return {order: self.folder() / f"{order}.jsonl"
                for order in (f"{name_a}{report.VS}{name_b}", f"{name_b}{report.VS}{name_a}")}  # fmt: skip

    def counts(self, summary: dict[str, Any]) -> dict[str, Any]:
        return {"judgments": summary["judgments"], "unscored": summary["unscored"]}

    def run(self) -> dict[str, Any]:
        return _run(self)


def run_judge(cfg: JudgeConfig) -> list[dict[str, Any]]:
    return JudgeStage(cfg).run()["reports"]


def _run(stage: JudgeStage) -> dict[str, Any]:
    cfg = stage.cfg
    name_a, name_b = model_names(cfg)  # before an offline teacher starts for nothing
    out = Path(cfg.output)
    with resolve_endpoint(cfg, log) as ep:
        tasks, skipped = plan(cfg, ep.model, (name_a, name_b))
        if skipped:
            log(f"{skipped} questions lack an answer in one of the files and are not judged")
        if not tasks:
            raise ConfigError("no question has an answer in both files")
        out.mkdir(parents=True, exist_ok=True)
        saved = journal.read_journal(out / CACHE, CachedJudgment)
        if saved.skipped:
            log(saved.describe(out / CACHE))
        cache = saved.rows
        results = {t["id"]: cache[t["id"]] for t in tasks if t["id"] in cache}
        todo = [t for t in tasks if t["id"] not in results]
        log(
            f"{name_a} vs {name_b}: {len(tasks)} judgments ({len(tasks) // 2} questions, both "
            f"orders), {len(results)} from the cache, {len(todo)} to ask {ep.model}"
        )
        if todo:
            for warning in asyncio.run(preflight(ep)):
                log(f"warning: {warning}")
            fatal = _ask(cfg, ep, todo, out, results)
            if fatal:
                raise ConfigError(f"the endpoint refused the job: {fatal}; fix it and re-run")
    files = []
    for order, path in stage.outputs().items():  # one review file per order
        rows = [review_row(t, results.get(t["id"], {"score": None, "error": "not run"}),
                           ep.model, t["id"] in cache)
                for t in tasks if t["order"] == order]  # fmt: skip
        write_jsonl(path, rows)
        files.append(path)
    reports = report.build_report(files, cfg.questions)
    unscored = [r for r in results.values() if r.get("score") is None]
    errors = sum(1 for r in unscored if r.get("error"))
    log(f"reviews: {files[0]} and {files[1]}")
    if unscored:
        log(f"{len(unscored) - errors} unparseable and {errors} failed judgments are left out of "
            "the totals; re-run the same command to ask for them again")  # fmt: skip
    say(report.format_table(reports))
    summary = {"reports": reports, "offline_teacher": ep.offline, "judgments": len(tasks),
               "unscored": len(unscored)}  # fmt: skip
    stage.finish(summary)
    if ep.offline:
        log("*** judged by the OFFLINE TEACHER: synthetic scores, not a real judge")
    return summary


def _ask(cfg: JudgeConfig, ep: Any, todo: list[dict[str, Any]], out: Path,
         results: dict[str, dict[str, Any]]) -> str | None:  # fmt: skip
    from selfee.ray_runtime import ray_runtime

    work = [{k: t[k] for k in ("id", "system", "user", "temperature", "max_tokens")} for t in todo]
    with journal.Journal(out / CACHE) as cache, ray_runtime(cfg.ray):

        def on_row(result: dict[str, Any]) -> None:
            results[result["id"]] = result
            if result.get("score") is not None and not result.get("error"):
                cache.write(result)  # only judgments with a score are ever reused

        progress = Progress(total=len(work), prices=cfg.prices, stage="judge")
        return fan_out(cfg, ep, work, JudgeWorker, on_row, progress, log,
                       worker_kwargs={"unparsed_retries": cfg.unparsed_retries})  # fmt: skip
