"""The judge job: two answer files, every question judged in both orders, on Ray Data.

Each judgment is keyed by what decides it (judge model, the exact prompt: question, both
answers, their order, the template). Judgments with a readable score go to a cache as they
arrive, so a re-run, or a run after a crash, asks only for what is missing; failed and
unparseable judgments are never cached. The review files come out in the SelFee/FastChat
format, one per order, followed by the report.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat

from selfee import journal, lineage
from selfee.config import dump_config
from selfee.console import say
from selfee.errors import ConfigError
from selfee.judge import report
from selfee.judge.config import JudgeConfig
from selfee.judge.scores import parse_score
from selfee.judge.templates import load_upstream, our_reviewers, reviewer_for
from selfee.llm import CallFailed, TeacherCall
from selfee.llm_job import LLMWorker, fan_out, preflight, resolve_endpoint
from selfee.progress import Progress
from selfee.records import read_questions, write_jsonl

CACHE = "judge_cache.jsonl"


class CachedJudgment(BaseModel):
    """A cached judgment, checked before it is reused (a bad one is asked again)."""

    model_config = ConfigDict(extra="allow", strict=True)

    id: str
    text: str
    score: Annotated[list[FiniteFloat], Field(min_length=2, max_length=2)]
    error: None = None


UNSCORED = [-1.0, -1.0]  # what FastChat's review files hold for a failed judgment


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


def judgment_key(model: str, messages: list[dict[str, str]]) -> str:
    blob = json.dumps([model, messages], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def model_name(path: Path) -> str:
    return Path(path).name.removesuffix(".jsonl")


def _by_question(path: Path, what: str) -> dict[Any, dict[str, Any]]:
    return {row["question_id"]: row for row in read_questions(path, what)}


def plan(cfg: JudgeConfig, model: str) -> tuple[list[dict[str, Any]], tuple[str, str], int]:
    """(judgments to make, in question order and both orders; model names; questions skipped)."""
    if cfg.questions is None or len(cfg.answers) != 2:
        raise ConfigError("give --questions Q.jsonl and --answers A.jsonl B.jsonl (two files)")
    name_a, name_b = (model_name(p) for p in cfg.answers)
    if name_a == name_b or report.VS in name_a or report.VS in name_b:
        raise ConfigError(
            f"answer files need two different names without '{report.VS}' (they name the "
            f"models in the review files): got {name_a}, {name_b}"
        )
    questions = _by_question(cfg.questions, "questions")
    answers = {name_a: _by_question(cfg.answers[0], "answers"),
               name_b: _by_question(cfg.answers[1], "answers")}  # fmt: skip
    if cfg.prompts is not None and cfg.reviewers is not None:
        reviewers = load_upstream(cfg.prompts, cfg.reviewers)
    else:
        reviewers = our_reviewers()
    tasks, skipped = [], 0
    for qid, question in questions.items():
        if any(qid not in answers[name] for name in (name_a, name_b)):
            skipped += 1
            continue
        category = str(question.get("category", ""))
        reviewer = reviewer_for(category, reviewers)
        for first, second in ((name_a, name_b), (name_b, name_a)):
            one, two = answers[first][qid], answers[second][qid]
            system, user = (m["content"] for m in reviewer.template.messages(
                question["text"], one["text"], two["text"]))  # fmt: skip
            messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
            tasks.append({
                "id": judgment_key(model, messages),
                "question_id": qid,
                "category": category,
                "order": f"{first}{report.VS}{second}",
                "answer1_id": str(one.get("answer_id") or f"{first}:{qid}"),
                "answer2_id": str(two.get("answer_id") or f"{second}:{qid}"),
                "answer1_words": len(one["text"].split()),
                "answer2_words": len(two["text"].split()),
                "reviewer_id": reviewer.reviewer_id,
                "system": system,
                "user": user,
                "temperature": reviewer.temperature if reviewer.temperature is not None else cfg.temperature,
                "max_tokens": reviewer.max_tokens or cfg.max_tokens,
            })  # fmt: skip
    return tasks, (name_a, name_b), skipped


def review_row(task: dict[str, Any], result: dict[str, Any], model: str, cached: bool) -> dict:
    parsed = result.get("score") is not None
    return {
        "review_id": task["id"][:22],
        "question_id": task["question_id"],
        "answer1_id": task["answer1_id"],
        "answer2_id": task["answer2_id"],
        "reviewer_id": task["reviewer_id"],
        "text": result.get("text", ""),
        "score": result["score"] if parsed else UNSCORED,
        "metadata": {
            "category": task["category"],
            "judge_model": model,
            "parsed": parsed,
            "error": result.get("error"),
            "cached": cached,
            "answer1_words": task["answer1_words"],
            "answer2_words": task["answer2_words"],
        },
    }


def run_judge(cfg: JudgeConfig) -> list[dict[str, Any]]:
    started = time.monotonic()
    out = Path(cfg.output)
    with resolve_endpoint(cfg, log) as ep:
        tasks, (name_a, name_b), skipped = plan(cfg, ep.model)
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
    for order in (f"{name_a}{report.VS}{name_b}", f"{name_b}{report.VS}{name_a}"):
        rows = [review_row(t, results.get(t["id"], {"score": None, "error": "not run"}),
                           ep.model, t["id"] in cache)
                for t in tasks if t["order"] == order]  # fmt: skip
        files.append(out / f"{order}.jsonl")
        write_jsonl(files[-1], rows)
    reports = report.build_report(files, cfg.questions)
    unscored = [r for r in results.values() if r.get("score") is None]
    errors = sum(1 for r in unscored if r.get("error"))
    log(f"reviews: {files[0]} and {files[1]}")
    if unscored:
        log(f"{len(unscored) - errors} unparseable and {errors} failed judgments are left out of "
            "the totals; re-run the same command to ask for them again")  # fmt: skip
    say(report.format_table(reports))
    summary = {"reports": reports, "offline_teacher": ep.offline, "config": dump_config(cfg)}
    (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    inputs = {"questions": Path(str(cfg.questions)), name_a: cfg.answers[0], name_b: cfg.answers[1]}
    lineage.write_manifest(
        out / lineage.MANIFEST, "judge", inputs, summary["config"],
        {f.stem: f for f in files}, {"judgments": len(tasks), "unscored": len(unscored)},
        time.monotonic() - started,
    )  # fmt: skip
    if ep.offline:
        log("*** judged by the OFFLINE TEACHER: synthetic scores, not a real judge")
    return reports


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
