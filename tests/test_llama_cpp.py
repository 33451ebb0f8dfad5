"""Quantized SelFee on a CPU: `selfee export gguf` with llama.cpp's own converter and
quantizer, and the llama.cpp engine under revision control, against the HF engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from conftest import check_manifest, selfee_serve
from selfee.chain import parse
from selfee.engines.hf import HFEngine
from selfee.engines.llama_cpp import GGUFError, LlamaCppEngine
from selfee.export.tokenizer_check import strings
from selfee.revision import (
    Completion,
    CompletionRequest,
    RevisionSettings,
    generate,
    generate_batch,
)
from selfee.testing.selfee_model import QUESTIONS, prompt

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def exported(selfee_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Exported as a user does it, from the command line."""
    out = tmp_path_factory.mktemp("gguf")
    done = subprocess.run([sys.executable, "-m", "selfee.cli", "export", "gguf", "--model",
                           str(selfee_model_dir), "--output", str(out), "--quant", "f16", "q8_0",
                           "q4_K_M", "--prompts", "4"], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "SELFEE_LOG_DIR": str(out / "logs")})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "export.json").read_text())
    return {f["type"]: f for f in summary["files"]} | {"summary": summary, "out": out,
                                                        "console": done.stderr, "table": done.stdout}  # fmt: skip


@pytest.fixture(scope="module")
def f16(exported: dict) -> Iterator[LlamaCppEngine]:
    engine = LlamaCppEngine(exported["f16"]["file"], n_threads=2)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def hf(selfee_model_dir: Path) -> HFEngine:
    return HFEngine.load(selfee_model_dir, device="cpu", dtype="float32")


def test_export_writes_each_type_and_says_what_it_holds(exported: dict) -> None:
    summary = exported["summary"]
    assert summary["pre_tokenizer"] == "gpt-2" and summary["tokenizer_strings_checked"] >= 200
    assert exported["f16"]["tensor_types"].keys() >= {"F16", "F32"}  # norms stay f32
    assert "Q8_0" in exported["q8_0"]["tensor_types"]
    q4 = exported["q4_K_M"]
    assert q4["fallback_tensors"] > 0  # rows of 64 are no multiple of 256: they fall back
    assert (
        q4["bits_per_weight"]
        < exported["q8_0"]["bits_per_weight"]
        < exported["f16"]["bits_per_weight"]
    )
    assert exported["f16"]["greedy_identical_percent"] == 100.0
    assert exported["f16"]["mean_abs_logit_diff"] < 0.01
    assert exported["f16"]["perplexity"] == pytest.approx(
        exported["f16"]["perplexity_source"], rel=1e-3
    )
    for kind in ("f16", "q8_0", "q4_K_M"):
        assert (
            Path(exported[kind]["file"]).stat().st_size > 0
            and exported[kind]["architecture"] == "llama"
        )
    manifest = check_manifest(exported["out"] / "manifest.json", "export")
    assert set(manifest["outputs"]) == {"f16", "q8_0", "q4_K_M"}
    assert summary["files"][0]["type"] == "f16"
    # the console: a bar over the steps (convert, tokenizer, reference, one per type), the table
    assert "[export] steps: 100%|" in exported["console"] and " 6/6 " in exported["console"]
    assert "greedy identical" in exported["table"]  # on stdout


def test_the_gguf_tokenizer_gives_the_models_ids(f16: LlamaCppEngine, hf: HFEngine) -> None:
    texts = strings()
    assert len(texts) >= 200
    for text in texts:
        assert f16.tokenize(text) == hf.tokenizer(text)["input_ids"], text


def test_f16_greedy_equals_the_hf_engine_token_for_token(f16: LlamaCppEngine, hf: HFEngine) -> None:
    for i in range(6):
        request = CompletionRequest(prompt(i), (), 120, key=f"q{i}")
        ours, theirs = f16.complete(request), hf.complete(request)
        assert ours.ids == theirs.ids and ours.text == theirs.text and len(ours.ids) > 20
    settings = RevisionSettings(min_revisions=2, max_new_tokens=300)
    a, b = generate(f16, prompt(7), settings, key="g"), generate(hf, prompt(7), settings, key="g")
    assert (a.text, a.revisions, a.finish_reason) == (b.text, b.revisions, b.finish_reason)


class Recording:
    """The engine, with every completion it returned."""

    def __init__(self, engine: LlamaCppEngine) -> None:
        self.engine, self.done = engine, []

    def complete(self, request: CompletionRequest) -> Completion:
        self.done.append(self.engine.complete(request))
        return self.done[-1]


def test_revision_control_on_llama_cpp(f16: LlamaCppEngine) -> None:
    autonomous = generate(f16, prompt(0), RevisionSettings(max_new_tokens=300), key="a")
    assert autonomous.finish_reason == "verdict" and autonomous.revisions == 1
    capped = generate(
        f16, prompt(1), RevisionSettings(max_revisions=0, max_new_tokens=300), key="c"
    )
    assert (capped.revisions, capped.finish_reason) == (0, "max_revisions")
    recording = Recording(f16)
    forced = generate(
        recording, prompt(2), RevisionSettings(min_revisions=2, max_new_tokens=400), key="f"
    )
    assert forced.revisions >= 2 and forced.forced_rewrites >= 1
    assert parse(forced.whole_generation).final_answer == forced.final_answer
    first, *continuations = recording.done
    assert first.prompt_tokens == f16.count_tokens(prompt(2))
    # a continuation evaluates only what the controller appended (the rewritten verdict and
    # the next header, a few tokens), never the chain again
    assert continuations and all(0 < c.prompt_tokens <= 12 for c in continuations)
    assert forced.prompt_tokens < first.prompt_tokens + 12 * len(continuations)


def test_batched_chains_match_one_at_a_time(f16: LlamaCppEngine) -> None:
    prompts = [prompt(i) for i in range(5)]
    settings = RevisionSettings(min_revisions=1, max_new_tokens=200)
    together = generate_batch(f16, prompts, settings)
    alone = [generate(f16, p, settings, key=f"alone{i}") for i, p in enumerate(prompts)]
    assert [r.text for r in together] == [r.text for r in alone]


def test_streamed_rows_join_to_their_completions(f16: LlamaCppEngine) -> None:
    requests = [CompletionRequest(prompt(i), ("Revision is not needed.",), 200, key=f"s{i}")
                for i in range(3)]  # fmt: skip
    pieces: dict[int, list[str]] = {0: [], 1: [], 2: []}
    done = f16.complete_batch(requests, lambda row, piece: pieces[row].append(piece) or True)
    for row, completion in enumerate(done):
        assert "".join(pieces[row]) == completion.text and completion.stop is not None
        assert len(pieces[row]) == completion.tokens  # one call per token


def test_bad_files_are_one_clear_error(exported: dict, tmp_path: Path) -> None:
    source = Path(exported["q8_0"]["file"])
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("just text")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(source.read_bytes()[: source.stat().st_size // 2])
    other_arch = tmp_path / "other-arch.gguf"
    data = source.read_bytes()
    at = data.index(b"general.architecture")
    other_arch.write_bytes(data[:at] + data[at:].replace(b"llama", b"llamb", 1))
    (tmp_path / "q.jsonl").write_text('{"question_id": 1, "text": "Hi"}\n')
    for path, says in [(not_gguf, "is not a GGUF file"), (truncated, "cannot load it"),
                       (other_arch, "unknown model architecture: 'llamb'")]:  # fmt: skip
        with pytest.raises(GGUFError, match=says) as caught:
            LlamaCppEngine(path)
        assert str(path) in str(caught.value)
        done = subprocess.run([sys.executable, "-m", "selfee.cli", "infer", "--model", str(path),
                               "--questions", str(tmp_path / "q.jsonl"), "--output",
                               str(tmp_path / "a.jsonl")], capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        errors = [line for line in done.stderr.splitlines() if "error:" in line]
        assert done.returncode != 0 and len(errors) == 1 and str(path) in errors[0], done.stderr
        assert "Traceback" not in done.stderr


def test_infer_with_a_gguf_file(ray_session: None, exported: dict, tmp_path: Path) -> None:
    from selfee.infer.config import InferConfig
    from selfee.infer.job import run_infer
    from selfee.records import read_jsonl, write_jsonl

    questions = tmp_path / "q.jsonl"
    write_jsonl(questions, [{"question_id": i, "text": q} for i, q in enumerate(QUESTIONS[:4])])
    cfg = InferConfig(model=exported["q8_0"]["file"], questions=questions,
                      output=tmp_path / "a.jsonl", min_revisions=1, max_new_tokens=200,
                      batch_size=4)  # fmt: skip
    summary = run_infer(cfg)
    rows = list(read_jsonl(tmp_path / "a.jsonl"))
    assert summary["answers"] == 4 and all(r["metadata"]["revisions"] >= 1 for r in rows)
    assert rows[0]["model_id"].endswith("-q8_0")
    assert rows[0]["metadata"]["device"].startswith("llama.cpp ")


def test_selfee_serve_with_a_gguf_model(exported: dict, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with selfee_serve(Path(exported["q4_K_M"]["file"]), log) as base:
        client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=120)
        name = client.models.list().data[0].id
        done = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": QUESTIONS[0]}],
            extra_body={"min_revisions": 1}, max_tokens=200,
        )  # fmt: skip
        assert done.model_extra["selfee"]["revisions_count"] >= 1
        chunks = list(client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": QUESTIONS[1]}], stream=True,
            max_tokens=400,
        ))  # fmt: skip
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        last = chunks[-1].model_extra["selfee"]
        content = "".join(c.choices[0].delta.content or "" for c in chunks)
        assert content == last["text"]  # the chain, token by token
        # more pieces than segments (answer, feedbacks, revisions), not one per segment. How
        # many more depends on the machine: the replica joins the tokens that came while it
        # was sending, and this toy model writes a segment in a few ms (a loaded CI machine
        # sent 5 pieces for 4 segments). The relay's pacing is tested alone in test_serve_api.
        pieces = [c for c in chunks if c.model_extra["selfee"]["delta"]]
        assert len(pieces) > 1 + len(last["feedbacks"]) + len(last["revisions"])
        bad = httpx.post(f"{base}/chat/completions", json={"messages": "hi"}, timeout=30)
        assert bad.status_code == 400
