"""Revision control on real engines: a tiny trained model (KV cache kept across
continuations, batched) and an OpenAI-compatible /v1/completions endpoint over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from selfee.chain import Verdict, final_answer, parse
from selfee.engines.completions_api import CompletionsAPIEngine, EndpointError
from selfee.engines.hf import HFEngine
from selfee.llm import Secret
from selfee.revision import CompletionRequest, RevisionSettings, generate, generate_batch
from selfee.testing.selfee_model import prompt


@pytest.fixture(scope="module")
def engine(selfee_model_dir: Path) -> HFEngine:
    return HFEngine.load(selfee_model_dir)


def fresh(engine: HFEngine, reuse_cache: bool = True) -> HFEngine:
    return HFEngine(engine.model, engine.tokenizer, reuse_cache=reuse_cache)


def check_format(result) -> None:
    chain = parse(result.whole_generation)
    assert chain.prompt == result.prompt
    assert result.final_answer == final_answer(result.whole_generation) == chain.final_answer
    assert len(chain.feedbacks) >= 1


def test_autonomous_mode_stops_where_the_model_says_not_needed(engine: HFEngine) -> None:
    for i in range(4):
        result = generate(fresh(engine), prompt(i), RevisionSettings(max_new_tokens=300))
        check_format(result)
        assert result.finish_reason == "verdict" and result.forced_rewrites == 0
        assert result.chain.verdicts == [Verdict.NEEDED, Verdict.NOT_NEEDED]  # as trained
        assert result.revisions == 1
        assert "because it was painted" in result.final_answer


def test_min_revisions_two_yields_at_least_two_revisions(engine: HFEngine) -> None:
    for i in range(4):
        result = generate(
            fresh(engine), prompt(i), RevisionSettings(min_revisions=2, max_new_tokens=400)
        )
        check_format(result)
        assert result.revisions >= 2 and result.forced_rewrites >= 1
        assert result.chain.verdicts[:2] == [Verdict.NEEDED, Verdict.NEEDED]


def test_max_revisions_zero_stops_before_the_first_revision(engine: HFEngine) -> None:
    result = generate(fresh(engine), prompt(0), RevisionSettings(max_revisions=0))
    check_format(result)
    assert (result.finish_reason, result.revisions) == ("max_revisions", 0)
    assert result.final_answer == result.chain.answer


def test_kv_reuse_matches_regenerating_from_scratch_token_for_token(engine: HFEngine) -> None:
    settings = RevisionSettings(min_revisions=8, max_new_tokens=600)
    for i in range(3):
        reused = generate(fresh(engine), prompt(i), settings)
        scratch = generate(fresh(engine, reuse_cache=False), prompt(i), settings)
        assert reused.forced_rewrites >= 2
        assert reused.text == scratch.text and reused.tokens == scratch.tokens
        # the scratch run re-fed the whole prefix on every call; the cached run only the new part
        assert scratch.prompt_tokens > reused.prompt_tokens + (reused.calls - 1) * 30


def test_the_cache_survives_across_generations_with_a_shared_prefix(engine: HFEngine) -> None:
    shared = fresh(engine)
    settings = RevisionSettings(min_revisions=1, max_new_tokens=300)
    for i in [2, 0, 2, 5]:  # switching prompts keeps only the common prefix
        assert (
            generate(shared, prompt(i), settings).text
            == generate(fresh(engine), prompt(i), settings).text
        )


def test_batched_generation_matches_one_at_a_time(engine: HFEngine) -> None:
    settings = RevisionSettings(min_revisions=2, max_revisions=3, max_new_tokens=300)
    prompts = [prompt(i) for i in range(6)]
    batched = generate_batch(fresh(engine), prompts, settings)
    single = [generate(fresh(engine), p, settings) for p in prompts]
    assert [r.text for r in batched] == [r.text for r in single]
    assert [r.tokens for r in batched] == [r.tokens for r in single]


def test_sampling_is_reproducible_with_a_seed(engine: HFEngine) -> None:
    settings = RevisionSettings(
        min_revisions=1, temperature=1.5, top_p=0.9, seed=7, max_new_tokens=200
    )
    first = generate(fresh(engine), prompt(1), settings)
    assert generate(fresh(engine), prompt(1), settings).text == first.text
    others = {
        generate(
            fresh(engine), prompt(1), RevisionSettings(**{**settings.__dict__, "seed": s})
        ).text
        for s in range(5)
    }
    assert len(others) > 1  # the seed matters


def test_extreme_sampling_values_fall_back_to_the_greedy_token(engine: HFEngine) -> None:
    """temperature 1e-300 would overflow the softmax, top_p 1e-300 is 0 in fp32: both give
    the greedy tokens, never an exception (a server request must not fail in the step)."""
    greedy = fresh(engine).complete(CompletionRequest(prompt(0), (), 40, key="g"))
    for temperature, top_p in [(1e-300, 1.0), (5e-324, 1.0), (1.0, 1e-300), (2.0, 1e-300)]:
        done = fresh(engine).complete(
            CompletionRequest(prompt(0), (), 40, temperature=temperature, top_p=top_p, key="x")
        )
        assert (done.text, done.tokens) == (greedy.text, greedy.tokens), (temperature, top_p)


def test_budget_and_context_limits(engine: HFEngine) -> None:
    result = generate(fresh(engine), prompt(0), RevisionSettings(max_new_tokens=20))
    assert result.finish_reason == "budget" and result.tokens == 20
    small = HFEngine(engine.model, engine.tokenizer, max_context=48)
    near = generate(small, prompt(0), RevisionSettings(max_new_tokens=500))
    assert near.finish_reason == "budget" and near.tokens < 48
    with pytest.raises(ValueError, match="model's context is 48"):
        small.complete(CompletionRequest(prompt(0) * 3, (), 10))


# --- an OpenAI-compatible endpoint (the offline teacher's /v1/completions) --------------


def api_engine(teacher) -> CompletionsAPIEngine:
    return CompletionsAPIEngine(
        teacher.base_url, "offline-teacher", Secret("unused"), max_retries=0
    )


def test_completions_endpoint_engine_forces_revisions(start_teacher) -> None:
    teacher = start_teacher(needed_fraction=0.0)  # the "model" is satisfied at once
    engine = api_engine(teacher)
    autonomous = generate(engine, prompt(0), RevisionSettings())
    assert (autonomous.revisions, autonomous.finish_reason) == (0, "verdict")
    forced = generate(engine, prompt(0), RevisionSettings(min_revisions=2))
    check_format(forced)
    assert (forced.revisions, forced.forced_rewrites, forced.finish_reason) == (2, 2, "verdict")
    assert forced.tokens > autonomous.tokens


def test_completions_endpoint_engine_caps_and_batches(start_teacher) -> None:
    teacher = start_teacher(needed_fraction=1.0, later_needed_fraction=1.0)  # never satisfied
    engine = api_engine(teacher)
    results = generate_batch(
        engine, [prompt(i) for i in range(4)], RevisionSettings(max_revisions=2)
    )
    for result in results:
        check_format(result)
        assert (result.revisions, result.finish_reason) == (2, "max_revisions")


def test_completions_endpoint_errors_name_the_status_not_the_key(
    start_teacher, monkeypatch
) -> None:
    monkeypatch.setenv("TEACHER_KEY", "sk-right-key-123")
    teacher = start_teacher(api_key_env="TEACHER_KEY")
    engine = CompletionsAPIEngine(teacher.base_url, "m", Secret("sk-wrong-key-456"), max_retries=0)
    with pytest.raises(EndpointError, match="HTTP 401") as failure:
        generate(engine, prompt(0), RevisionSettings())
    assert "sk-wrong-key-456" not in str(failure.value)


def test_completions_endpoint_engine_retries_faults_and_keeps_its_rpm(start_teacher) -> None:
    """The engine's requests go through the teacher calls' wing (``selfee.llm``): 5xx, 429
    and malformed replies are retried with backoff, and the actor's share of the job's
    requests per minute paces every request, retries included."""
    import httpx

    from selfee.llm_config import RetryConfig
    from selfee.ratelimit import split_limits

    teacher = start_teacher(needed_fraction=0.0, fault_rate=0.4, seed=3,
                            fault_kinds=["500", "malformed", "429"])  # fmt: skip
    share = split_limits(60, None, 1, 1)  # ~0.96 requests/s, evenly paced
    retry = RetryConfig(max_retries=10, backoff_s=0.01, max_backoff_s=0.05)
    engine = CompletionsAPIEngine(teacher.base_url, "offline-teacher", Secret("unused"),
                                  share=share, retry=retry)  # fmt: skip
    results = generate_batch(engine, [prompt(i) for i in range(4)], RevisionSettings())
    engine.close()
    assert [(r.revisions, r.finish_reason) for r in results] == [(0, "verdict")] * 4
    stats = httpx.get(f"{teacher.url}/stats", timeout=10).json()
    assert sum(stats["faults"].values()) >= 2 and engine.call.usage.retries >= 2
    assert engine.call.usage.requests == stats["received"]
    paced = (stats["received"] - 1) / share.requests.per_second  # type: ignore[union-attr]
    assert stats["last_request_at"] - stats["first_request_at"] >= 0.9 * paced


def test_a_chain_keeps_its_cache_whatever_it_is_batched_with(engine: HFEngine) -> None:
    """As in a serving replica, each call batches different chains: a chain that comes back
    (after calls with other neighbours, or without it at all) evaluates only its new
    tokens, a new chain its whole prompt, and every row gives the tokens it gives alone."""
    shared = fresh(engine)
    texts = {k: prompt(i) for i, k in enumerate("abcdefg")}
    seen: set[str] = set()
    for keys in ["ab", "bc", "cbd", "e", "dec", "fgbda", "a"]:  # neighbours change every call
        requests = [CompletionRequest(texts[k], (), 24, key=k) for k in keys]
        for k, request, done in zip(keys, requests, shared.complete_batch(requests), strict=True):
            alone = fresh(engine).complete(request)
            assert (done.text, done.ids) == (alone.text, alone.ids), (keys, k)
            if k in seen:  # only " Revision is needed." and the token before it are new
                assert done.prompt_tokens <= 8 and done.cached_tokens > 40, (keys, k)
            else:
                assert done.cached_tokens == 0, (keys, k)
            texts[k] += done.text + " Revision is needed."  # the next continuation
            seen.add(k)


def test_parked_chains_are_kept_within_their_budget(engine: HFEngine) -> None:
    shared = fresh(engine)
    cached = {}
    for i, k in enumerate("abc"):  # each call parks the chain of the call before
        shared.complete(CompletionRequest(prompt(i), (), 4, key=k))
        cached[k] = len(shared._rows[0].ids)
        shared.parked_tokens = cached["a"] + cached.get("b", 0) - 1  # room for one of them
    assert list(shared._parked) == ["b"]  # the least recently used went first
    again = shared.complete(CompletionRequest(prompt(0), (), 4, key="a"))
    assert again.cached_tokens == 0  # evicted: its prompt evaluated again
    assert list(shared._parked) == ["c"]  # parked by that call; "b" made room for it
    # a chain that comes back is not made room for by the one its call parks
    back = shared.complete(CompletionRequest(prompt(2), (), 4, key="c"))
    assert back.cached_tokens == shared.count_tokens(prompt(2)) - 1  # all but the last
    assert list(shared._parked) == ["a"]


def test_columns_left_by_gone_chains_are_packed_away(engine: HFEngine) -> None:
    """A chain that goes on while others come and go does not drag their columns along:
    at the start of a call the cache is at most twice what the fullest row holds."""
    shared = fresh(engine)
    long_text, widths = prompt(0), []
    for i in range(1, 9):
        requests = [CompletionRequest(long_text, (), 16, key="long"),
                    CompletionRequest(prompt(i) * 2, (), 16, key=f"n{i}")]  # fmt: skip
        shared._select_rows([r.key for r in requests])  # what the call starts with
        widths.append(shared._mask.shape[1])
        used = max(len(row.columns) for row in shared._rows)
        assert (
            widths[-1] <= max(2 * used, used + 64) and widths[-1] == shared._cache.get_seq_length()
        )
        done = shared.complete_batch(requests)
        assert done[1].ids == fresh(engine).complete(requests[1]).ids
        long_text += done[0].text
    assert fresh(engine).complete(CompletionRequest(long_text, (), 16, key="y")).ids == (
        shared.complete(CompletionRequest(long_text, (), 16, key="long")).ids
    )
