"""Revision control: one algorithm for every engine (batch inference and serving alike).

A SelFee model writes an answer, a feedback on it that ends with a verdict, and — when the
verdict says "Revision is needed." — a revision, another feedback, and so on, until a
feedback says "Revision is not needed." and the model ends the text.

The controller drives any text-completion engine (``complete(request) -> Completion``)
through that chain, one completion per step:

- it stops the engine at the canonical "not needed" verdict (a stop string that ends a call
  only where it closes a feedback: ``CompletionRequest.feedback_stops``); if fewer than
  ``min_revisions`` revisions exist, it rewrites the verdict to "Revision is needed.", adds
  the next "### Revision k:" header and continues from there (a *forced rewrite*);
  a "not needed" variant the model wrote in other words is caught when the model ends;
- below ``min_revisions``, a model that ends early is continued too (also a forced
  rewrite): after an answer or a revision the next "### Feedback k:" is opened, after a
  feedback without a verdict "Revision is needed." and the next revision header are added;
  so ``min_revisions`` revisions are written unless the token budget runs out;
- it stops the engine before the "### Revision" header past ``max_revisions`` (where it
  follows a feedback: elsewhere a header is text, as the verdict is);
- with ``answer_only`` it stops before the first feedback (independent samples for
  majority-vote baselines);
- it stops when ``max_new_tokens`` are spent; the final answer is then the last finished
  revision (``selfee.chain`` decides that).

Every continuation is the previous text plus what the controller appended, so engines that
keep a KV cache (``selfee.engines.hf``) reuse it, and servers with prefix caching (vLLM)
do the same on their side. ``RevisionController`` holds no engine: ``generate`` runs one
chain, ``generate_batch`` steps many chains together so an engine can batch them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol, TypeVar

from pydantic import ConfigDict, Field, ValidationInfo, field_validator, model_validator

from selfee.chain import (
    VERDICT_NEEDED,
    VERDICT_NOT_NEEDED,
    ParsedChain,
    Verdict,
    feedback_header,
    parse_generation,
    revision_header,
    verdict_span,
)
from selfee.config import StageConfig

T = TypeVar("T")
FinishReason = Literal["eos", "verdict", "max_revisions", "budget", "aborted", "answer_only"]
EngineFinish = Literal["stop", "eos", "length", "abort"]  # abort: the caller stopped the row

VERDICT_STOP = VERDICT_NOT_NEEDED
ANSWER_STOP = feedback_header(1).strip("\n").removesuffix(" 1:")  # "### Feedback", any number
MAX_REVISIONS = 100  # the most a setting may force or allow
GREEDY_BELOW = 1e-5  # temperatures under this sample greedily (as vLLM's _SAMPLING_EPS)


def revision_stop(k: int) -> str:
    """The header that opens revision ``k``, as a stop string (the newline after it may be
    generated together with the next token, so it is left out)."""
    return revision_header(k).rstrip("\n")


class RevisionSettings(StageConfig):
    """Revision control and sampling: one type from a stage's YAML (``selfee infer``) and a
    request's fields (the Serve endpoint) to the controller. Its errors say what is wrong in
    the words of the keys, whichever way the values came."""

    model_config = ConfigDict(frozen=True)

    min_revisions: int = Field(
        0, description="force at least this many revisions (0: the model decides)"
    )
    max_revisions: int | None = Field(
        None, description="stop before the revision past this many (empty: no cap)"
    )
    max_new_tokens: int = Field(1024, description="tokens generated per question, all revisions")
    temperature: float = Field(0.0, description="sampling temperature (0: greedy)")
    top_p: float = Field(1.0, description="nucleus sampling mass")
    seed: int = Field(0, description="sampling seed (each question adds its index)")
    answer_only: bool = Field(
        False, description="write the answer only: no feedback, no revision (sampling baselines)"
    )

    @field_validator("min_revisions", "max_revisions")
    @classmethod
    def _revisions(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is not None and not 0 <= value <= MAX_REVISIONS:
            raise ValueError(f"{info.field_name} must be 0 or more, at most {MAX_REVISIONS} "
                             f"(got {value})")  # fmt: skip
        return value

    @field_validator("max_new_tokens")
    @classmethod
    def _tokens(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"max_new_tokens must be 1 or more (got {value})")
        return value

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, value: float) -> float:
        if not 0 <= value <= 2:
            raise ValueError(f"temperature must be 0 or more, at most 2 (got {value})")
        return value

    @field_validator("top_p")
    @classmethod
    def _top_p(cls, value: float) -> float:
        if not 0 < value <= 1:
            raise ValueError(f"top_p must be in (0, 1] (got {value})")
        return value

    @model_validator(mode="after")
    def _together(self) -> RevisionSettings:
        if self.max_revisions is not None and self.min_revisions > self.max_revisions:
            raise ValueError(
                f"min_revisions ({self.min_revisions}) is above max_revisions "
                f"({self.max_revisions})"
            )
        if self.answer_only and self.min_revisions:
            raise ValueError("answer_only writes no revision: min_revisions must be 0")
        return self


@dataclass(frozen=True)
class CompletionRequest:
    prompt: str  # the whole text so far: the SelFee prompt and the chain written until now
    stop: tuple[str, ...]
    max_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    key: str = ""  # which generation this continues (engines that keep a cache per chain)
    # Of ``stop``, those that end the call only where they close a feedback: in an answer
    # or a revision the verdict phrase is text, and an engine that checks this goes on in
    # the same call (no new request, no re-evaluated prompt tail). An engine that does not
    # check stops there as at any stop string; revision control then continues the text.
    feedback_stops: tuple[str, ...] = ()
    generation_start: int = 0  # where the chain's generation starts in ``prompt``
    adapter: str | None = None  # which of the engine's adapters writes it (None: its model)

    def stop_ends_call(self, text: str, at: int, stop: str) -> bool:
        """Whether ``stop``, found at ``text[at]`` of this call's new text, ends the call."""
        if stop not in self.feedback_stops:
            return True
        generation = self.prompt[self.generation_start :] + text[:at]
        return parse_generation(generation).segments[-1].kind == "feedback"


@dataclass(frozen=True)
class Completion:
    text: str  # the new text, without the stop string that ended it
    finish_reason: EngineFinish  # "length": max_tokens, or the model's context, is used up
    tokens: int  # tokens generated (including those of a matched stop string)
    stop: str | None = None  # which stop string matched (None with "stop": the engine
    # did not say whether a stop string or EOS ended the text)
    prompt_tokens: int = 0  # prompt tokens the engine had to process for this call
    ids: tuple[int, ...] = ()  # the generated token ids, from engines that know them
    cached_tokens: int = 0  # prompt tokens the engine took from its cache instead


class CompletionEngine(Protocol):
    def complete(self, request: CompletionRequest) -> Completion: ...


class AsyncCompletionEngine(Protocol):
    """An engine that runs many requests at once on its own event loop (vLLM): chains are
    driven concurrently, none waits at a step barrier for another."""

    async def acomplete(self, request: CompletionRequest) -> Completion: ...

    def run(self, make: Callable[[], Awaitable[T]]) -> T: ...


@dataclass
class RevisionResult:
    prompt: str
    text: str  # the generated chain (with forced rewrites), without the prompt
    final_answer: str
    revisions: int
    forced_rewrites: int
    tokens: int
    prompt_tokens: int
    finish_reason: FinishReason
    calls: int
    chain: ParsedChain = field(repr=False)
    cached_tokens: int = 0  # prompt tokens of all calls the engine took from its cache
    first_call_cached_tokens: int = 0  # of them, in the first call (the request's prompt)
    request_prompt_tokens: int = 0  # the request's own prompt: the first call's, all of it
    # the model's own verdict where revision control wrote "Revision is needed." in its
    # place (forced rewrites): feedback number → "not needed" or "unknown" (it wrote none)
    forced_verdicts: dict[str, str] = field(default_factory=dict)

    @property
    def whole_generation(self) -> str:
        return self.prompt + self.text

    def summary(self) -> dict[str, Any]:
        """Everything but the texts, for metadata and logs."""
        return {
            k: v
            for k, v in asdict(self).items()
            if k not in ("prompt", "text", "final_answer", "chain")
        }


class RevisionController:
    """One chain, step by step: ``next_request`` says what to generate, ``feed`` takes it."""

    def __init__(
        self, prompt: str, settings: RevisionSettings, key: str = "", adapter: str | None = None
    ) -> None:
        self.prompt = prompt
        self.settings = settings
        self.key = key
        self.adapter = adapter  # which of the engine's adapters writes the chain
        self.text = ""
        self.tokens = 0
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.first_call_cached_tokens = 0
        self.request_prompt_tokens = 0
        self.forced_rewrites = 0
        self.calls = 0
        self.finish_reason: FinishReason | None = None
        self.forced_verdicts: dict[str, str] = {}
        self._stops: tuple[str, ...] = ()
        self._opened = False  # the controller opened a segment the model has not written in

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def chain(self) -> ParsedChain:
        return parse_generation(self.text, self.prompt)

    def next_request(self) -> CompletionRequest | None:
        if self.done:
            return None
        left = self.settings.max_new_tokens - self.tokens
        if left <= 0:
            self.finish_reason = "budget"
            return None
        stops = [ANSWER_STOP] if self.settings.answer_only else [VERDICT_STOP]
        if self.settings.max_revisions is not None and not self.settings.answer_only:
            stops.append(revision_stop(self.settings.max_revisions + 1))
        self._stops = tuple(stops)
        # both the verdict and the header past max_revisions mean something only after a
        # feedback (a revision header elsewhere is text: ``parse_generation``)
        feedback_stops = () if self.settings.answer_only else self._stops
        return CompletionRequest(
            prompt=self.prompt + self.text,
            stop=self._stops,
            max_tokens=left,
            temperature=self.settings.temperature,
            top_p=self.settings.top_p,
            seed=self.settings.seed + self.calls,
            key=self.key,
            feedback_stops=feedback_stops,
            generation_start=len(self.prompt),
            adapter=self.adapter,
        )

    def feed(self, completion: Completion) -> None:
        if not self.calls:
            self.first_call_cached_tokens = completion.cached_tokens
            self.request_prompt_tokens = completion.prompt_tokens + completion.cached_tokens
        self.calls += 1
        self.tokens += completion.tokens
        self.prompt_tokens += completion.prompt_tokens
        self.cached_tokens += completion.cached_tokens
        self.text += completion.text
        if completion.tokens:
            self._opened = False
        if completion.finish_reason == "abort":
            self.finish_reason = "aborted"
            return
        if self.settings.answer_only and completion.finish_reason in ("stop", "eos"):
            self.text = self.text.rstrip("\n")  # the answer, before the feedback header
            self.finish_reason = "answer_only"
            return
        chain = self.chain()  # parsed once per call: the whole text so far
        stop = completion.stop
        if completion.finish_reason == "stop" and stop is None:
            stop = self._infer_stop(chain)
        cap = self.settings.max_revisions
        if cap is not None and len(chain.revisions) > cap:  # misnumbered headers slipped by
            self._cut_before_revision(chain, cap + 1)
            self.finish_reason = "max_revisions"
        elif completion.finish_reason == "stop" and stop is not None:
            self._after_stop(chain, stop)
        elif completion.finish_reason in ("stop", "eos"):
            self._after_eos(chain, stalled=self._opened and completion.tokens == 0)
        else:
            self.finish_reason = "budget"
        if not self.done and self.tokens >= self.settings.max_new_tokens:
            self.finish_reason = "budget"

    def result(self) -> RevisionResult:
        if not self.done:
            raise RuntimeError("the generation is not finished")
        assert self.finish_reason is not None
        chain = self.chain()
        return RevisionResult(
            prompt=self.prompt,
            text=self.text,
            final_answer=chain.final_answer,
            revisions=len(chain.revisions),
            forced_rewrites=self.forced_rewrites,
            tokens=self.tokens,
            prompt_tokens=self.prompt_tokens,
            finish_reason=self.finish_reason,
            calls=self.calls,
            chain=chain,
            cached_tokens=self.cached_tokens,
            first_call_cached_tokens=self.first_call_cached_tokens,
            request_prompt_tokens=self.request_prompt_tokens,
            forced_verdicts=dict(self.forced_verdicts),
        )

    # --- what happens after each kind of ending ---------------------------------------

    def _after_stop(self, chain: ParsedChain, stop: str) -> None:
        if stop != VERDICT_STOP:  # the header of the revision past max_revisions
            cap = self.settings.max_revisions or 0
            if chain.segments[-1].kind != "feedback":  # no header where it stands: text
                self.text += stop
            elif len(chain.revisions) < cap:  # a misnumbered header: number it right, go on
                self.text += revision_header(len(chain.revisions) + 1)
            else:
                self.finish_reason = "max_revisions"
            return
        if chain.segments[-1].kind != "feedback":
            self.text += stop  # the phrase inside an answer or revision is no verdict: go on
            return
        if len(chain.revisions) < self.settings.min_revisions:
            self._force_revision(len(self.text), len(chain.revisions) + 1, len(chain.feedbacks))
            return
        self.text += stop
        self.finish_reason = "verdict"

    def _after_eos(self, chain: ParsedChain, stalled: bool) -> None:
        last = chain.segments[-1]
        verdict, start, _ = verdict_span(last.text)
        if last.kind != "feedback":
            verdict = Verdict.UNKNOWN
        below_min = len(chain.revisions) < self.settings.min_revisions
        if verdict is Verdict.NOT_NEEDED and below_min:
            self._force_revision(
                last.start + _sentence_start(last.text, start),
                len(chain.revisions) + 1,
                len(chain.feedbacks),
            )
            return
        if below_min and not stalled:  # the model ended early: min_revisions promises more
            self._continue_chain(chain, verdict)
            return
        self.finish_reason = "verdict" if verdict is Verdict.NOT_NEEDED else "eos"

    def _continue_chain(self, chain: ParsedChain, verdict: Verdict) -> None:
        """After an answer or a revision, open the next feedback; after a feedback, say
        "Revision is needed." (unless it did) and open the next revision. If the model then
        writes nothing at all, the chain ends (a model that only ever ends would loop)."""
        self.text = self.text.rstrip()
        if chain.segments[-1].kind != "feedback":
            self.text += feedback_header(len(chain.feedbacks) + 1)
        else:
            if verdict is not Verdict.NEEDED:
                self.text += " " + VERDICT_NEEDED
                self.forced_verdicts[str(len(chain.feedbacks))] = Verdict.UNKNOWN.value
            self.text += revision_header(len(chain.revisions) + 1)
        self.forced_rewrites += 1
        self._opened = True

    def _force_revision(self, verdict_at: int, k: int, feedback: int) -> None:
        """Replace the "not needed" verdict of ``feedback`` at ``verdict_at`` (and what
        follows) by "Revision is needed." and open revision ``k``."""
        self.text = self.text[:verdict_at] + VERDICT_NEEDED + revision_header(k)
        self.forced_verdicts[str(feedback)] = Verdict.NOT_NEEDED.value
        self._opened = True
        self.forced_rewrites += 1

    def _cut_before_revision(self, chain: ParsedChain, k: int) -> None:
        revision_k = [s for s in chain.segments if s.kind == "revision"][k - 1]
        before = chain.segments[chain.segments.index(revision_k) - 1]
        self.text = self.text[: before.end]

    def _infer_stop(self, chain: ParsedChain) -> str | None:
        """For engines that end with "stop" without saying whether a stop string or EOS
        ended the text: a feedback that ends in a verdict ended with the model (EOS), or
        before the revision header past the cap when it asked for one; a feedback cut
        before its verdict met the verdict stop string."""
        last = chain.segments[-1]
        if last.kind != "feedback":
            return None
        verdict, _, end = verdict_span(last.text)
        if verdict is Verdict.UNKNOWN or last.text[end:].strip(" .!\n"):
            return VERDICT_STOP
        if verdict is Verdict.NEEDED and len(self._stops) > 1:
            return self._stops[1]
        return None


def _sentence_start(text: str, at: int) -> int:
    """Where the sentence holding ``text[at]`` starts: a forced rewrite replaces the whole
    verdict sentence ("It does not need any revision." becomes "Revision is needed.")."""
    cut = max(text.rfind(mark, 0, at) for mark in (". ", "! ", "? ", "\n"))
    if cut < 0:
        return 0
    return cut + (1 if text[cut] == "\n" else 2)


def generate(
    engine: CompletionEngine, prompt: str, settings: RevisionSettings, key: str = ""
) -> RevisionResult:
    controller = RevisionController(prompt, settings, key)
    while (request := controller.next_request()) is not None:
        controller.feed(engine.complete(request))
    return controller.result()


async def generate_async(
    engine: AsyncCompletionEngine,
    prompt: str,
    settings: RevisionSettings,
    key: str = "",
    adapter: str | None = None,
) -> RevisionResult:
    controller = RevisionController(prompt, settings, key, adapter)
    while (request := controller.next_request()) is not None:
        controller.feed(await engine.acomplete(request))
    return controller.result()


def generate_batch(
    engine: CompletionEngine | AsyncCompletionEngine,
    prompts: Sequence[str],
    settings: RevisionSettings | Sequence[RevisionSettings],
    adapters: Sequence[str | None] | None = None,
) -> list[RevisionResult]:
    """Generate many chains. On an engine with its own event loop (``acomplete``) every
    chain runs on its own, all in flight at once; on others all chains step together: each
    round sends every unfinished chain's next request at once (``engine.complete_batch``
    when the engine has one). ``settings``: one for all, or one per prompt (e.g. each with
    its own seed). ``adapters``: which of the engine's adapters writes each chain (None:
    its model; the same question may come once per adapter)."""
    each = [settings] * len(prompts) if isinstance(settings, RevisionSettings) else settings
    chains = list(zip(prompts, each, adapters or [None] * len(prompts), strict=True))
    if hasattr(engine, "acomplete"):
        concurrent: Any = engine

        async def all_chains() -> list[RevisionResult]:
            return list(await asyncio.gather(*(
                generate_async(concurrent, p, s, str(i), a) for i, (p, s, a) in enumerate(chains)
            )))  # fmt: skip

        return concurrent.run(all_chains)
    controllers = [RevisionController(p, s, str(i), a) for i, (p, s, a) in enumerate(chains)]
    batch_call = getattr(engine, "complete_batch", None)
    while True:
        pending = [(c, r) for c in controllers if (r := c.next_request()) is not None]
        if not pending:
            break
        requests = [r for _, r in pending]
        completions = batch_call(requests) if batch_call else [engine.complete(r) for r in requests]
        for (controller, _), completion in zip(pending, completions, strict=True):
            controller.feed(completion)
    return [c.result() for c in controllers]
