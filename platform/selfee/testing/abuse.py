"""A generated mix of abusive and valid requests for an OpenAI-compatible SelFee endpoint.

What a careless client or an attacker sends: numbers from tiny to huge, negative, strings
for numbers; broken Unicode (escaped lone surrogates, bytes that are not UTF-8); JSON nested
deeper than any parser's stack; wrong types everywhere; bodies over the size limit; odd
headers. The rule it checks: every answer is a 200 or a 4xx, every valid request gets a
200, every stream ends with ``data: [DONE]``. Used by the serving tests and by
``bench/serve_load.py``; it only ever talks to the URL it is given (127.0.0.1 there).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

QUESTION = "What color is the car?"


@dataclass(frozen=True)
class Probe:
    name: str
    path: str  # "/chat/completions" or "/completions", under the /v1 URL
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    valid: bool = False  # must get a 200 (streams: and end with [DONE])
    stream: bool = False
    status: int | None = None  # the exact status expected, where one is
    says: str = ""  # what the error message must say


@dataclass
class Outcome:
    probe: Probe
    status: int | str  # the HTTP status, or the client's exception name
    text: str
    seconds: float

    @property
    def problem(self) -> str | None:
        """Why this outcome breaks the rule, or None."""
        p = self.probe
        if not isinstance(self.status, int):
            return f"{p.name}: no HTTP answer ({self.status})"
        if self.status >= 500:
            return f"{p.name}: HTTP {self.status}: {self.text[:200]}"
        if p.valid and self.status != 200:
            return f"{p.name}: a valid request got HTTP {self.status}: {self.text[:200]}"
        if p.status is not None and self.status != p.status:
            return f"{p.name}: expected HTTP {p.status}, got {self.status}: {self.text[:200]}"
        if p.says and p.says not in self.text:
            return f"{p.name}: the answer does not say {p.says!r}: {self.text[:200]}"
        if self.status == 200 and p.stream and not self.text.endswith("data: [DONE]\n\n"):
            return f"{p.name}: the stream did not end with [DONE]: {self.text[-200:]!r}"
        if self.status == 200 and p.stream and '"error"' in self.text and p.valid:
            return f"{p.name}: a valid stream carried an error event: {self.text[-300:]}"
        return None


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _chat(**fields: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 48, **fields}


def valid_probes(max_tokens: int = 48) -> list[Probe]:
    """Requests a server must answer with a 200, edge values among them."""
    chat = "/chat/completions"
    return [
        Probe("plain chat", chat, _json(_chat(max_tokens=max_tokens)), valid=True),
        Probe(
            "forced revision",
            chat,
            _json(_chat(max_tokens=max_tokens, min_revisions=1)),
            valid=True,
        ),
        Probe(
            "completions",
            "/completions",
            _json({"prompt": QUESTION, "max_tokens": max_tokens}),
            valid=True,
        ),
        Probe(
            "stream chat",
            chat,
            _json(_chat(max_tokens=max_tokens, stream=True)),
            valid=True,
            stream=True,
        ),
        Probe(
            "stream completions",
            "/completions",
            _json({"prompt": QUESTION, "max_tokens": max_tokens, "stream": True}),
            valid=True,
            stream=True,
        ),
        Probe("temperature 1e-300", chat, _json(_chat(temperature=1e-300)), valid=True),
        Probe(
            "temperature 1e-300 streamed",
            chat,
            _json(_chat(temperature=1e-300, stream=True)),
            valid=True,
            stream=True,
        ),
        Probe("temperature 5e-324", chat, _json(_chat(temperature=5e-324)), valid=True),
        Probe("temperature 2", chat, _json(_chat(temperature=2, seed=3)), valid=True),
        Probe("top_p 1e-300", chat, _json(_chat(temperature=1.0, top_p=1e-300)), valid=True),
        Probe(
            "seed at int64 edges", chat, _json(_chat(temperature=0.7, seed=2**63 - 1)), valid=True
        ),
        Probe("negative seed", chat, _json(_chat(temperature=0.7, seed=-(2**63))), valid=True),
        Probe("one token", chat, _json(_chat(max_tokens=1)), valid=True),
        Probe(
            "text parts",
            chat,
            _json(
                {
                    "messages": [
                        {
                            "role": "user",
                            "content": [
                                {"type": "text", "text": "What color "},
                                {"type": "text", "text": "is it?"},
                            ],
                        }
                    ],
                    "max_tokens": 24,
                }
            ),
            valid=True,
        ),
        Probe(
            "unknown fields ignored",
            chat,
            _json(_chat(user="u1", logprobs=False, foo={"a": 1})),
            valid=True,
        ),
        Probe(
            "system and developer turns",
            chat,
            _json(
                {
                    "messages": [
                        {"role": "system", "content": "Be brief."},
                        {"role": "developer", "content": "x"},
                        {"role": "user", "content": QUESTION},
                    ],
                    "max_tokens": 24,
                }
            ),
            valid=True,
        ),
    ]


def abusive_probes() -> list[Probe]:
    chat = "/chat/completions"
    probes: list[Probe] = []

    def bad(
        name: str,
        body: Any,
        says: str = "",
        status: int | None = 400,
        path: str = chat,
        headers: dict[str, str] | None = None,
    ) -> None:
        raw = body if isinstance(body, bytes) else _json(body)
        probes.append(Probe(name, path, raw, headers or {}, status=status, says=says))

    numbers = {
        "temperature": [-1, -1e-300, 2.0000001, 1e308, "0.5", True, [0.5], {"v": 1}],
        "top_p": [0, -0.5, 1.5, 1e308, "1"],
        "max_tokens": [0, -5, 2**63, 10**30, 1.5, "10", False],
        "seed": [2**64, -(2**63) - 1, 1.5, "7", [1]],
        "min_revisions": [-1, 21, 10**20, "1", 1.0],
        "max_revisions": [-3, 10**9, "2", 0.5],
        "n": [0, 2, 1.0, "1"],
        "stream": ["yes", 1],
        "stop": [5, ["a"] * 5, [1, 2]],
        "model": [5, ["m"], "gpt-4o"],
    }
    for key, values in numbers.items():
        for value in values:
            status = 404 if (key, value) == ("model", "gpt-4o") else 400
            bad(f"{key}={json.dumps(value)[:30]}", _chat(**{key: value}), key, status)
    for raw in (
        b'{"messages": [], "temperature": NaN}',
        b'{"temperature": Infinity}',
        b'{"max_tokens": 1' + b"0" * 400 + b"}",
        b'{"temperature": 1e999, "messages": [{"role": "user", "content": "x"}]}',
    ):
        bad(f"non-JSON number {raw[:30]!r}", raw)
    bad(
        "lone surrogate in content",
        b'{"messages": [{"role": "user", "content": "a\\ud800b"}]}',
        "not valid Unicode",
    )
    bad(
        "lone low surrogate",
        b'{"messages": [{"role": "user", "content": "\\udfff"}]}',
        "not valid Unicode",
    )
    bad(
        "surrogate in model",
        b'{"model": "\\ud83d", "messages": [{"role": "user", "content": "x"}]}',
        "not valid Unicode",
    )
    bad("surrogate in prompt", b'{"prompt": "\\ud800"}', "not valid Unicode", path="/completions")
    bad(
        "bytes not UTF-8",
        b'{"messages": [{"role": "user", "content": "caf\xe9"}]}',
        "not valid JSON",
    )
    bad("UTF-16 body", json.dumps(_chat()).encode("utf-16"), status=None)  # JSON allows it
    bad("nested body", b"[" * 100_000 + b"]" * 100_000, "nested")
    bad("nested object", b'{"a":' * 5_000 + b"1" + b"}" * 5_000, "nested")
    bad("nested inside messages", _nest({"role": "user", "content": "x"}, 60), "nested")
    bad("nested content", {"messages": [{"role": "user", "content": _nest("x", 20)}]}, "content")
    bad("nested unknown field", {**_chat(), "extra": _nest(1, 40)}, "nested")
    for body in (b"", b"null", b"[]", b"42", b'"text"', b"{", b"{not json}", b"\x00\x01"):
        bad(f"body {body[:12]!r}", body, "")
    bad("messages a string", {"messages": "hi"}, "messages")
    bad("messages empty", {"messages": []}, "messages")
    bad("messages of numbers", {"messages": [1, 2]}, "messages")
    bad("content a number", {"messages": [{"role": "user", "content": 3}]}, "content")
    bad("content missing", {"messages": [{"role": "user"}]}, "content")
    bad("role robot", {"messages": [{"role": "robot", "content": "x"}]}, "role")
    bad("last turn assistant", {"messages": [{"role": "assistant", "content": "x"}]}, "user")
    bad(
        "image part",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "http://x"}}],
                }
            ]
        },
        "content",
    )
    bad("prompt empty", {"prompt": ""}, "prompt", path="/completions")
    bad("prompt list of two", {"prompt": ["a", "b"]}, "prompt", path="/completions")
    bad("prompt tokens", {"prompt": [1, 2, 3]}, "prompt", path="/completions")
    bad(
        "prompt over the context",
        {"messages": [{"role": "user", "content": "word " * 20_000}]},
        "context",
    )
    bad(
        "body over 4 MB",
        {"messages": [{"role": "user", "content": "x" * (5 << 20)}]},
        "bytes",
        status=413,
    )
    for name, headers in {
        "text/plain": {"Content-Type": "text/plain"},
        "form": {"Content-Type": "application/x-www-form-urlencoded"},
        "gzip claimed": {"Content-Encoding": "gzip"},
        "odd accept": {"Accept": "image/png", "Accept-Encoding": "br, zstd, gzip"},
        "basic auth": {"Authorization": "Basic Zm9vOmJhcg=="},
        "empty bearer": {"Authorization": "Bearer"},
        "many headers": {f"X-Junk-{i}": "y" * 100 for i in range(50)},
    }.items():
        probes.append(Probe(f"header {name}", chat, _json(_chat()), headers, status=None))
    return probes


def _nest(inner: Any, depth: int) -> Any:
    for _ in range(depth):
        inner = {"deeper": inner}
    return inner


def mix(total: int, abusive_share: float = 0.5, seed: int = 0, max_tokens: int = 48) -> list[Probe]:
    """``total`` probes: every abusive kind at least once when ``total`` allows, valid ones
    for the rest, shuffled so that abuse and valid requests share batches."""
    rng = random.Random(seed)
    abusive, valid = abusive_probes(), valid_probes(max_tokens)
    n_bad = min(total, max(round(total * abusive_share), min(len(abusive), total)))
    chosen = abusive[:n_bad] + [rng.choice(abusive) for _ in range(n_bad - len(abusive))]
    chosen += [valid[i % len(valid)] for i in range(total - len(chosen))]
    rng.shuffle(chosen)
    return chosen


async def send(
    url: str, probes: list[Probe], concurrency: int, key: str | None = None, timeout_s: float = 300
) -> list[Outcome]:
    """Send every probe to ``url`` (the /v1 base), ``concurrency`` at a time."""
    import httpx

    slots = asyncio.Semaphore(concurrency)
    auth = {"Authorization": f"Bearer {key}"} if key else {}

    async def one(client: httpx.AsyncClient, probe: Probe) -> Outcome:
        headers = {"Content-Type": "application/json", **auth, **probe.headers}
        async with slots:
            started = time.perf_counter()
            try:
                async with client.stream(
                    "POST", url + probe.path, content=probe.body, headers=headers
                ) as response:
                    text = (await response.aread()).decode("utf-8", "replace")
                    status: int | str = response.status_code
            except httpx.HTTPError as e:
                status, text = type(e).__name__, str(e)
            return Outcome(probe, status, text, time.perf_counter() - started)

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        return list(await asyncio.gather(*(one(client, p) for p in probes)))


def statuses(outcomes: list[Outcome]) -> dict[str, int]:
    return dict(sorted(Counter(str(o.status) for o in outcomes).items()))
