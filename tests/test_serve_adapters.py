"""Several LoRA adapters on one base: the HF engine runs each row of a batch on its own
adapter, and the SelFee endpoint serves every adapter under its name (a request's
``model`` picks one). Each must write what that adapter alone, merged, writes."""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from ray import serve

from conftest import deploy_selfee
from selfee.engines import check_model
from selfee.engines.hf import HFEngine
from selfee.revision import CompletionRequest, RevisionSettings, generate
from selfee.serve.app import build
from selfee.serve.openai_api import chat_prompt

PROMPT = "### Human: What color is the car?\n\n### Assistant:"
MESSAGES = [{"role": "user", "content": "What color is the car?"}]


def alone(path: Path, request: CompletionRequest) -> list[int]:
    """The tokens the model (an adapter: merged into its base) writes on its own engine."""
    request = dataclasses.replace(request, adapter=None, key="")
    return list(HFEngine.load(path, device="cpu").complete(request).ids)


def test_a_base_without_a_pad_token_writes_what_transformers_writes(
    adapter_models: dict[str, Path],
) -> None:
    """The HF engine runs such a base as it is (as vLLM does): no row added for the
    ``[PAD]`` training adds, which would be one more token it could write."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter_models["base"])
    model = AutoModelForCausalLM.from_pretrained(adapter_models["base"])
    ids = tokenizer(PROMPT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=48, do_sample=False, eos_token_id=None)
    expected = out[0, ids.shape[1] :].tolist()
    engine = HFEngine.load(adapter_models["base"], device="cpu")
    assert list(engine.complete(CompletionRequest(PROMPT, (), 48)).ids) == expected
    # text that reads like that token is text, as for vLLM
    assert engine.count_tokens("[PAD]") == len(tokenizer("[PAD]")["input_ids"]) > 2


def test_each_row_of_a_batch_runs_its_own_adapter(adapter_models: dict[str, Path]) -> None:
    engine = HFEngine.load(adapter_models["base"], device="cpu",
                           adapters={"math": adapter_models["math"], "code": adapter_models["code"]})  # fmt: skip
    asked = [None, "math", "code", "math"]
    requests = [CompletionRequest(PROMPT, (), 20, key=f"chain{i}", adapter=adapter)
                for i, adapter in enumerate(asked)]  # fmt: skip
    first = engine.complete_batch(requests)
    expected = {
        a: alone(adapter_models[a or "base"], CompletionRequest(PROMPT, (), 20)) for a in asked
    }
    assert len(set(map(tuple, expected.values()))) == 3  # the adapters write different text
    assert [list(done.ids) for done in first] == [expected[a] for a in asked]
    # the chains continue in another order and company: each keeps its cache and adapter
    then = [CompletionRequest(PROMPT + done.text, (), 8, key=r.key, adapter=r.adapter)
            for r, done in zip(requests, first, strict=True)][::-1]  # fmt: skip
    again = engine.complete_batch(then)
    assert all(done.cached_tokens > 0 for done in again)
    for request, done in zip(then, again, strict=True):
        assert list(done.ids) == alone(adapter_models[request.adapter or "base"], request)
    with pytest.raises(KeyError, match="no adapter"):
        engine.complete_batch([CompletionRequest(PROMPT, (), 4, adapter="chat")])


def test_an_adapter_as_the_model_keeps_serving_requests_that_name_none(
    adapter_models: dict[str, Path],
) -> None:
    engine = HFEngine.load(
        adapter_models["math"], device="cpu", adapters={"code": adapter_models["code"]}
    )
    request = CompletionRequest(PROMPT, (), 16)
    assert list(engine.complete(request).ids) == alone(adapter_models["math"], request)
    coded = CompletionRequest(PROMPT, (), 16, adapter="code")
    assert list(engine.complete(coded).ids) == alone(adapter_models["code"], request)


def test_adapters_that_cannot_share_the_base_are_refused(
    adapter_models: dict[str, Path], tmp_path: Path
) -> None:
    def refusal(engine: str = "hf", model: Path = adapter_models["base"], **adapters: Path) -> str:
        with pytest.raises(ValueError) as caught:
            check_model(model, engine, adapters=adapters)
        return str(caught.value)

    assert (
        check_model(adapter_models["base"], "hf", adapters={"math": adapter_models["math"]}) == "hf"
    )
    assert refusal(x=adapter_models["elsewhere"]).startswith(
        f"adapters: x: {adapter_models['elsewhere']} was trained on {adapter_models['other_base']}, not on"
    )
    assert refusal(x=adapter_models["other_base"]) == (
        f"adapters: x: {adapter_models['other_base']} is not a LoRA adapter (no adapter_config.json)"
    )
    assert refusal(x=tmp_path / "nope") == f"adapters: x: {tmp_path / 'nope'}: no such directory"
    assert refusal("auto", tmp_path / "model.gguf", x=adapter_models["math"]).startswith(
        "adapters: engine llama_cpp runs one GGUF file"
    )
    # vLLM's CPU build runs a base request batched with adapter requests on an adapter
    assert refusal("vllm", x=adapter_models["math"]).startswith(
        "adapters: vLLM on CPUs cannot run the base itself beside adapters"
    )
    assert (
        check_model(adapter_models["math"], "vllm", adapters={"code": adapter_models["code"]})
        == "vllm"
    )
    # `serve run configs/serve/selfee.yaml` checks them too, before any replica starts
    with pytest.raises(ValueError, match=r"adapters: x: .* was trained on"):
        build(
            {
                "model": str(adapter_models["base"]),
                "adapters": {"x": str(adapter_models["elsewhere"])},
            }
        )
    with pytest.raises(ValueError, match="vLLM on CPUs cannot run the base itself"):
        build({"model": str(adapter_models["base"]), "engine": "vllm",
               "adapters": {"math": str(adapter_models["math"])}})  # fmt: skip
    # an adapter whose tokenizer gives other ids to the base's tokens
    retokenized = tmp_path / "retokenized"
    retokenized.mkdir()
    for part in adapter_models["math"].iterdir():
        (retokenized / part.name).write_bytes(part.read_bytes())
    vocab_file = retokenized / "tokenizer.json"
    vocab_file.write_text(vocab_file.read_text().replace('"<s>": 0', '"<S>": 0'))
    assert "has another tokenizer than" in refusal(x=retokenized)


@pytest.mark.slow
@pytest.mark.usefixtures("ray_session")
class TestServedSideBySide:
    @pytest.fixture(scope="class")
    def endpoint(self, adapter_models: dict[str, Path]) -> Iterator[str]:
        # a step waits up to 0.5 s for others: concurrent requests share batches
        yield deploy_selfee(adapter_models["base"], adapters={"math": str(adapter_models["math"]),
                            "code": str(adapter_models["code"])}, batch_wait_timeout_s=0.5)  # fmt: skip
        serve.shutdown()

    def test_every_adapter_answers_under_its_name(
        self, endpoint: str, adapter_models: dict[str, Path]
    ) -> None:
        client = openai.OpenAI(base_url=endpoint, api_key="none", max_retries=0, timeout=120)
        assert [m.id for m in client.models.list().data] == ["base", "math", "code"]

        def ask(model: str) -> openai.types.chat.ChatCompletion:
            return client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=40,
                                                  extra_body={"min_revisions": 1})  # fmt: skip

        names = ["base", "math", "code", "math", "code", "base"]
        with concurrent.futures.ThreadPoolExecutor(len(names)) as pool:
            answers = list(pool.map(ask, names))
        settings = RevisionSettings(min_revisions=1, max_new_tokens=40)
        expected = {name: generate(HFEngine.load(adapter_models[name], device="cpu"),
                                   chat_prompt(MESSAGES), settings).text
                    for name in set(names)}  # fmt: skip
        assert len(set(expected.values())) == 3
        for name, done in zip(names, answers, strict=True):
            assert done.model == name
            assert done.model_extra["selfee"]["text"] == expected[name], name
        # requests for different adapters ran in one batch (one base, one forward pass)
        handle = serve.get_deployment_handle("SelFeeModel", app_name="selfee")
        assert max(handle.batch_sizes.remote().result()) > 1

        stream = client.chat.completions.create(model="code", messages=MESSAGES, max_tokens=40,
                                                stream=True, extra_body={"min_revisions": 1})  # fmt: skip
        chunks = list(stream)
        assert {chunk.model for chunk in chunks} == {"code"}
        text = chunks[-1].model_extra["selfee"]["text"]
        assert text == expected["code"]

    def test_a_model_not_served_is_a_404_naming_those_that_are(self, endpoint: str) -> None:
        reply = httpx.post(f"{endpoint}/chat/completions", timeout=60,
                           json={"model": "chat", "messages": MESSAGES})  # fmt: skip
        assert reply.status_code == 404
        error = reply.json()["error"]
        assert error["code"] == "model_not_found"
        assert error["message"] == (
            "model 'chat' does not exist; this server has 'base', 'math', 'code'"
        )
