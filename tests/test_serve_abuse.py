"""A real `selfee serve` under a generated mix of abusive requests sent together with valid
ones (selfee.testing.abuse): zero 5xx, every valid request 200, every stream ended."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import selfee_serve
from selfee.testing import abuse

KEY = "sk-abuse-test-91c2"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def endpoint(selfee_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("serve-abuse") / "serve.log"
    with selfee_serve(selfee_model_dir, log, env={**os.environ, "SELFEE_API_KEY": KEY}) as url:
        yield url


def test_abuse_mixed_with_valid_requests_never_gets_a_5xx(endpoint: str) -> None:
    probes = abuse.mix(240, abusive_share=0.5, seed=1, max_tokens=32)
    kinds = {p.name for p in probes}
    assert kinds >= {p.name for p in abuse.abusive_probes()}  # every kind of abuse is sent
    outcomes = asyncio.run(abuse.send(endpoint, probes, concurrency=16, key=KEY))
    problems = [o.problem for o in outcomes if o.problem]
    assert problems == [], f"{len(problems)} broke the rule: {problems[:10]}"
    valid = [o for o in outcomes if o.probe.valid]
    assert len(valid) >= 100 and all(o.status == 200 for o in valid)
    assert sum(o.probe.stream for o in valid) >= 10  # streams among them, each ended


@pytest.mark.parametrize(
    ("name", "status", "says"),
    [
        ("temperature 1e-300", 200, '"finish_reason"'),
        ("temperature 1e-300 streamed", 200, "data: [DONE]"),
        ("lone surrogate in content", 400, "messages[0].content is not valid Unicode"),
        ("surrogate in prompt", 400, "'prompt' is not valid Unicode"),
        ("nested body", 400, "nested more than 32 levels"),
        ("nested inside messages", 400, "nested more than 32 levels"),
        ("body over 4 MB", 413, "over 4,194,304 bytes"),
        ("non-JSON number b'{\"temperature\": Infinity}'", 400, "not valid JSON"),
        ("max_tokens=9223372036854775808", 400, "'max_tokens' must be between 1 and 4096"),
    ],
)
def test_each_case(endpoint: str, name: str, status: int, says: str) -> None:
    probe = next(p for p in [*abuse.valid_probes(), *abuse.abusive_probes()] if p.name == name)
    (outcome,) = asyncio.run(abuse.send(endpoint, [probe], concurrency=1, key=KEY))
    assert outcome.status == status and says in outcome.text, outcome.text[:500]
    assert outcome.problem is None


def test_the_bearer_scheme_is_required(endpoint: str) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
    for header, status in [(KEY, 401), (f"Token {KEY}", 401), (f"Bearer {KEY}x", 401),
                           (f"bearer {KEY}", 200), (f"Bearer {KEY}", 200)]:  # fmt: skip
        r = httpx.post(f"{endpoint}/chat/completions", json=body, timeout=60,
                       headers={"Authorization": header})  # fmt: skip
        assert r.status_code == status, (header, r.text)
        assert KEY not in r.text
