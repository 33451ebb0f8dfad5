"""LoRA fine-tuning under Ray Train + DeepSpeed (2 CPU workers) on a pad-less base model:
the loss falls, only the adapter trains and is checkpointed, the adapter export and the
merged export give the same logits as base + adapter, and the adapter alone loads in
infer and serve on its base. What cannot take an adapter says so in one line."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import subprocess
import sys
from pathlib import Path

import openai
import pytest
import torch
from peft import PeftModel
from pydantic import ValidationError
from safetensors.torch import load_file
from test_train_job import tiny_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from conftest import selfee_serve
from selfee.engines import check_model
from selfee.engines.config import VLLMConfig
from selfee.engines.hf import HFEngine
from selfee.export.config import ExportGGUFConfig
from selfee.export.gguf import run_export
from selfee.infer.config import InferConfig
from selfee.infer.job import run_infer
from selfee.model_spec import build_model, hf_spec
from selfee.records import read_jsonl, write_jsonl
from selfee.revision import CompletionRequest
from selfee.testing.chains import make_chains, write_pad_less_base, write_random_adapter
from selfee.testing.selfee_model import question_file
from selfee.train.delta import DeltaError, make_delta
from selfee.train.export import export_model
from selfee.train.job import run_train

pytestmark = pytest.mark.slow
STEPS = 32


@pytest.fixture(scope="module")
def lora_run(ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One LoRA run (a worker killed mid-way) whose export is the adapter alone; the merged
    form exported from the same final checkpoint."""
    folder = tmp_path_factory.mktemp("lora")
    chains_file = folder / "chains.jsonl"
    write_jsonl(chains_file, make_chains(48))
    base = write_pad_less_base(folder / "base")
    lora = {"rank": 16, "alpha": 32, "dropout": 0.0, "export": "adapter"}
    cfg = tiny_config(chains_file, folder / "run", model=str(base), adapter="lora", lora=lora,
                      max_steps=STEPS, learning_rate=3e-3, checkpoint_every_steps=16,
                      max_context=256, fault_injection_step=20, max_failures=1)  # fmt: skip
    summary = run_train(cfg)
    checkpoint = max(p for p in Path(summary["checkpoints"]).glob("checkpoint_*") if p.is_dir())
    tokenizer = AutoTokenizer.from_pretrained(summary["model"])
    spec = hf_spec(base, tokenizer)
    merged = export_model(checkpoint, spec, tokenizer, folder / "merged", {},
                          adapter={"kind": "lora", **cfg.lora.model_dump(), "export": "merged"})  # fmt: skip
    return {"summary": summary, "adapter": Path(summary["model"]), "merged": merged,
            "base": base, "spec": spec, "checkpoint": checkpoint, "folder": folder}  # fmt: skip


def test_lora_learns_and_trains_and_saves_only_the_adapter(lora_run: dict) -> None:
    summary, adapter = lora_run["summary"], lora_run["adapter"]
    assert summary["steps"] == STEPS
    # a worker killed at step 20: the run went on from the adapter-only checkpoint of step 16
    assert summary["restarts"] == 1
    assert [h["step"] for h in summary["history"]] == list(range(1, STEPS + 1))
    assert [h["restarts"] for h in summary["history"]] == [0] * 16 + [1] * (STEPS - 16)
    # a random base's embeddings and head stay frozen: the loss falls from ln(401) = 6.0 to
    # about 5.3 in 40 steps (full fine-tuning goes much lower; test_train_job)
    assert summary["final_loss"] < summary["first_loss"] - 0.5, [
        h["loss"] for h in summary["history"]
    ]
    # the export: peft's adapter files, no full weights; selfee.json says what it is
    assert {"adapter_config.json", "adapter_model.safetensors", "selfee.json"} <= {
        p.name for p in adapter.iterdir()
    }
    assert not (adapter / "model.safetensors").exists()
    meta = json.loads((adapter / "selfee.json").read_text())
    assert meta["adapter"] == {"kind": "lora", "export": "adapter"}
    assert meta["base_model"] == str(lora_run["base"])
    weights = load_file(adapter / "adapter_model.safetensors")
    assert weights and all("lora_A" in k or "lora_B" in k for k in weights)
    layers = {k.split(".self_attn.")[-1].split(".mlp.")[-1].split(".")[0] for k in weights}
    assert layers == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    # checkpoints hold the adapter and its optimizer state, not the frozen base
    base_bytes = (lora_run["base"] / "model.safetensors").stat().st_size
    module_states = sum(p.stat().st_size for p in lora_run["checkpoint"].rglob("*model_states.pt"))
    assert 0 < module_states < 0.5 * base_bytes
    # the base stayed frozen: the merged model's embeddings are the base's (+ the zero [PAD])
    merged = load_file(lora_run["merged"] / "model.safetensors")
    base = load_file(lora_run["base"] / "model.safetensors")
    embedding = merged["model.embed_tokens.weight"]
    assert torch.equal(embedding[:-1], base["model.embed_tokens.weight"])
    assert embedding[-1].eq(0).all()
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[q], base[q])  # the adapter folded into the weights


def test_merged_and_adapter_exports_give_base_plus_adapter_logits(lora_run: dict) -> None:
    tokenizer = AutoTokenizer.from_pretrained(lora_run["adapter"])
    ids = tokenizer("### Human: What color is the car?\n\n### Assistant:", return_tensors="pt")
    with torch.no_grad():
        unmerged = PeftModel.from_pretrained(build_model(lora_run["spec"], 0),
                                             str(lora_run["adapter"])).eval()  # fmt: skip
        expected = unmerged(**ids).logits
        merged = AutoModelForCausalLM.from_pretrained(lora_run["merged"]).eval()(**ids).logits
        base = build_model(lora_run["spec"], 0).eval()(**ids).logits
    assert torch.allclose(merged, expected, atol=1e-5), (merged - expected).abs().max()
    assert (base - expected).abs().max() > 1e-2  # the adapter changes what the model says
    # the engines: the adapter on its base, and the merged model, greedy token for token
    request = CompletionRequest(prompt="### Human: What color is the car?\n\n### Assistant:",
                                stop=(), max_tokens=24)  # fmt: skip
    from_adapter = HFEngine.load(lora_run["adapter"], device="cpu").complete(request)
    from_merged = HFEngine.load(lora_run["merged"], device="cpu").complete(request)
    assert from_adapter.ids == from_merged.ids and len(from_adapter.ids) == 24


def test_the_adapter_loads_in_infer_and_serve(lora_run: dict, tmp_path: Path) -> None:
    questions = question_file(tmp_path / "q.jsonl", 3)
    answers = {}
    for name in ("adapter", "merged"):
        cfg = InferConfig(model=str(lora_run[name]), questions=questions,
                          output=tmp_path / f"{name}.jsonl", max_new_tokens=24)  # fmt: skip
        run_infer(cfg)
        answers[name] = [a["whole_generation"] for a in read_jsonl(cfg.output)]
    assert answers["adapter"] == answers["merged"] and len(answers["adapter"]) == 3

    with selfee_serve(lora_run["adapter"], tmp_path / "serve.log") as url:
        client = openai.OpenAI(base_url=url, api_key="none")
        done = client.chat.completions.create(
            model=client.models.list().data[0].id,
            messages=[{"role": "user", "content": "What color is the car?"}], max_tokens=24,
        )  # fmt: skip
    assert done.model_extra["selfee"]["text"]


def test_the_adapter_runs_on_vllm_as_on_the_hf_engine(lora_run: dict, tmp_path: Path) -> None:
    """vLLM loads the base and applies the adapter with its own LoRA: batch inference (the
    engine in a Ray Data actor, revisions forced) and Serve (Ray Serve LLM's server, the
    adapter loaded at start) write what the HF engine writes with the adapter folded in."""
    from ray import serve

    from conftest import deploy_selfee
    from selfee.engines.vllm import vllm_model
    from selfee.revision import RevisionSettings, generate
    from selfee.serve.openai_api import chat_prompt

    adapter = lora_run["adapter"]
    assert check_model(adapter, engine="vllm") == "vllm"
    model = vllm_model(adapter)
    assert (model.base, model.adapter, model.max_lora_rank) == (str(lora_run["base"]),
                                                                str(adapter), 16)  # fmt: skip
    # the base's tokenizer is the run's but for [PAD], which the base cannot write: vLLM
    # reads it from the base's folder, beside a model config (none beside an adapter)
    assert model.tokenizer == str(lora_run["base"])

    # beside it, another adapter on the same base (rank 8, the base's own tokenizer)
    other = tmp_path / "other"
    write_random_adapter(AutoModelForCausalLM.from_pretrained(lora_run["base"]), lora_run["base"],
                         other, AutoTokenizer.from_pretrained(lora_run["base"]), 8)  # fmt: skip
    questions = question_file(tmp_path / "q.jsonl", 3)
    answers = {}
    for engine in ("hf", "vllm"):  # both adapters in one run: requests for each mixed
        cfg = InferConfig(model=str(adapter), engine=engine, questions=questions,
                          adapters={"other": other}, output=tmp_path / engine / "{model}.jsonl",
                          max_new_tokens=60, min_revisions=1, vllm={"kv_cache_gib": 0.25})  # fmt: skip
        run_infer(cfg)
        answers[engine] = {name: [a["whole_generation"] for a in read_jsonl(cfg.answer_file(name))]
                           for name in (adapter.name, "other")}  # fmt: skip
    assert answers["vllm"] == answers["hf"] and len(answers["hf"]["other"]) == 3
    assert answers["hf"]["other"] != answers["hf"][adapter.name]
    # a question that reads like the run's added token: text to vLLM (the base has no row
    # for [PAD]), not an id it refuses ("Token id 400 is out of vocabulary")
    with questions.open("a") as f:
        f.write(json.dumps({"question_id": 4, "text": "Why [PAD] it?", "category": "x"}) + "\n")
    summary = run_infer(cfg)
    assert summary["failed"] == {}, summary["failed"]
    assert [s["generated"] for s in summary["models"].values()] == [1, 1]

    messages = [{"role": "user", "content": "What color is the car?"}]
    reference = generate(HFEngine.load(adapter, device="cpu"), chat_prompt(messages),
                         RevisionSettings(min_revisions=1, max_new_tokens=40))  # fmt: skip
    without = generate(HFEngine.load(lora_run["base"], device="cpu"), chat_prompt(messages),
                       RevisionSettings(min_revisions=1, max_new_tokens=40))  # fmt: skip
    assert reference.text != without.text  # the adapter changes what the model writes
    # the other adapter beside it, served under its own name by the same vLLM engine
    other_reference = generate(HFEngine.load(other, device="cpu"), chat_prompt(messages),
                               RevisionSettings(min_revisions=1, max_new_tokens=40))  # fmt: skip
    assert other_reference.text not in (reference.text, without.text)
    url = deploy_selfee(adapter, engine="vllm", cpus_per_replica=1, vllm={"kv_cache_gib": 0.25},
                        adapters={"other": str(other)})  # fmt: skip
    try:
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=120)
        names = [m.id for m in client.models.list().data]
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            done, other_done = pool.map(
                lambda name: client.chat.completions.create(
                    model=name, messages=messages, max_tokens=40, extra_body={"min_revisions": 1}
                ),
                names,
            )  # fmt: skip
    finally:
        serve.shutdown()
    assert names == [adapter.name, "other"]
    assert done.model_extra["selfee"]["text"] == reference.text
    assert other_done.model == "other"
    assert other_done.model_extra["selfee"]["text"] == other_reference.text

    # the engine in-process (batch inference's, the benchmarks'): the other adapter
    # beside the trained one, requests for each all at once, as the HF engine writes
    from selfee.engines import load_engine

    engine = load_engine(adapter, "vllm", vllm=VLLMConfig(kv_cache_gib=0.25),
                         adapters={"other": other})  # fmt: skip
    try:
        asked = [None, "other", None, "other"]
        batch = [CompletionRequest(chat_prompt(messages), (), 24, key=f"k{i}", adapter=name)
                 for i, name in enumerate(asked)]  # fmt: skip

        async def at_once() -> list:
            return list(await asyncio.gather(*(engine.acomplete(r) for r in batch)))

        texts = [done.text for done in engine.run(at_once)]
    finally:
        engine.close()
    folders = {None: adapter, "other": other}
    alone = {name: HFEngine.load(folders[name], device="cpu").complete(
        CompletionRequest(chat_prompt(messages), (), 24)).text for name in folders}  # fmt: skip
    assert len(set(alone.values())) == 2
    assert texts == [alone[name] for name in asked]


def test_what_vllm_cannot_apply_is_refused_before_it_starts(lora_run: dict, tmp_path: Path) -> None:
    def edited(name: str, **change: object) -> Path:
        copy = tmp_path / name
        copy.mkdir()
        for part in lora_run["adapter"].iterdir():
            (copy / part.name).write_bytes(part.read_bytes())
        config = json.loads((copy / "adapter_config.json").read_text())
        (copy / "adapter_config.json").write_text(json.dumps({**config, **change}))
        return copy

    with pytest.raises(ValueError, match="LoRA rank 600; vLLM applies ranks up to 512"):
        check_model(edited("wide", r=600), engine="vllm")
    with pytest.raises(ValueError, match=r"saves whole modules too \(\['lm_head'\]\)"):
        check_model(edited("whole", modules_to_save=["lm_head"]), engine="vllm")
    assert check_model(edited("wide-hf", r=600)) == "hf"  # the HF engine merges any rank


def test_an_adapter_merged_after_training_is_the_runs_merged_export(
    lora_run: dict, tmp_path: Path
) -> None:
    """``selfee export merged``: the adapter-only export folded into its base later gives
    the weights the run's merged export has, and a full model the delta commands take."""
    out = tmp_path / "merged"
    command = [sys.executable, "-m", "selfee.cli", "export", "merged",
               "--model", str(lora_run["adapter"]), "--output", str(out)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"in {out}" in done.stdout and "(one tensor at a time)" in done.stdout
    ours = load_file(out / "model.safetensors")
    theirs = load_file(lora_run["merged"] / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(torch.allclose(ours[k], theirs[k], atol=1e-6) for k in ours)
    assert ours["model.embed_tokens.weight"].dtype == torch.float32  # the base's own type
    meta = json.loads((out / "selfee.json").read_text())
    assert meta["adapter"] == {"kind": "lora", "export": "merged"}
    assert check_model(out) == "hf" and make_delta(lora_run["base"], out, tmp_path / "delta")
    # an existing folder is not replaced unless asked; a full model is not an adapter
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "exists: give a new folder, or --overwrite" in again.stderr
    assert "Traceback" not in again.stderr
    command[command.index("--model") + 1] = str(out)
    command[command.index("--output") + 1] = str(tmp_path / "twice")
    full = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert full.returncode != 0 and "is not a LoRA adapter" in full.stderr
    command[command.index("--model") + 1] = str(tmp_path / "nowhere")
    missing = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert (
        missing.returncode != 0
        and f"--model {tmp_path / 'nowhere'}: no such folder" in missing.stderr
    )
    command[command.index("--model") + 1] = str(lora_run["adapter"])
    command[command.index("--output") + 1] = str(lora_run["base"] / "config.json")
    a_file = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert a_file.returncode != 0 and "config.json is a file: give a folder" in a_file.stderr


def test_a_plain_adapter_is_merged_one_tensor_at_a_time(
    lora_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The merge never builds the model: each weight is read, updated and written alone, in
    shards as big as asked, and the result is peft's merge (logits, the grown [PAD] rows). An
    adapter setting the stream does not apply (here a scale per module) goes through peft."""
    from selfee.export.merged import write_in_memory, write_merged
    from selfee.export.shards import INDEX_FILE

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the streamed merge built the model")

    with monkeypatch.context() as patched:
        patched.setattr(AutoModelForCausalLM, "from_pretrained", no_model)
        done = write_merged(lora_run["adapter"], tmp_path / "sharded", shard_bytes=200_000)
    assert done["merge"] == "streamed"
    shards = sorted((tmp_path / "sharded").glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "sharded" / INDEX_FILE).is_file()
    assert all(s.stat().st_size < 200_000 + 64 * 1024 for s in shards)  # + one tensor, header
    tokenizer = AutoTokenizer.from_pretrained(lora_run["adapter"])
    (tmp_path / "peft").mkdir()
    write_in_memory(lora_run["adapter"], tokenizer, tmp_path / "peft", "float32")
    ids = tokenizer("### Human: What color is the car? [PAD]", return_tensors="pt")
    with torch.no_grad():
        streamed = AutoModelForCausalLM.from_pretrained(tmp_path / "sharded").eval()
        peft_merged = AutoModelForCausalLM.from_pretrained(tmp_path / "peft").eval()
        assert torch.equal(streamed(**ids).logits, peft_merged(**ids).logits)
    assert streamed.config.vocab_size == len(tokenizer) == peft_merged.config.vocab_size
    assert streamed.config.pad_token_id == tokenizer.pad_token_id
    assert streamed.get_input_embeddings().weight[-1].eq(0).all()
    # a scale for q_proj alone: peft's merge, which applies it
    odd = tmp_path / "odd"
    odd.mkdir()
    for part in lora_run["adapter"].iterdir():
        (odd / part.name).write_bytes(part.read_bytes())
    config = json.loads((odd / "adapter_config.json").read_text())
    config["alpha_pattern"] = {"q_proj": 4 * config["lora_alpha"]}
    (odd / "adapter_config.json").write_text(json.dumps(config))
    done = write_merged(odd, tmp_path / "odd-merged")
    assert done["merge"] == "in memory (peft): its adapter_config sets alpha_pattern"
    plain, scaled = load_file(tmp_path / "peft" / "model.safetensors"), load_file(
        tmp_path / "odd-merged" / "model.safetensors")  # fmt: skip
    base = load_file(lora_run["base"] / "model.safetensors")
    q, k = "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"
    assert torch.allclose(scaled[q] - base[q], 4 * (plain[q] - base[q]), atol=1e-6)
    assert torch.equal(scaled[k], plain[k])


def test_a_lora_runs_export_never_builds_its_base(
    lora_run: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The export of a LoRA run writes peft's adapter files from the checkpoint alone and
    merges them one tensor at a time: a 13B base is never built in host memory (it was,
    in fp32, even to save MBs of adapter). Both exports are what peft makes of them."""
    from selfee.adapter import LLAMA_LINEAR
    from selfee.export.merged import write_in_memory

    tokenizer = AutoTokenizer.from_pretrained(lora_run["adapter"])
    settings = {"kind": "lora", "rank": 16, "alpha": 32.0, "dropout": 0.0,
                "target_modules": LLAMA_LINEAR}  # fmt: skip
    with monkeypatch.context() as patched:

        def no_model(*args: object, **kwargs: object) -> None:
            raise AssertionError("the export built the base")

        patched.setattr(AutoModelForCausalLM, "from_pretrained", no_model)
        for export in ("adapter", "merged"):
            export_model(lora_run["checkpoint"], lora_run["spec"], tokenizer, tmp_path / export,
                         {"steps": STEPS}, adapter={**settings, "export": export})  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "merged"]  # no temp left
    meta = json.loads((tmp_path / "merged" / "selfee.json").read_text())
    assert meta["adapter"] == {"kind": "lora", "export": "merged"} and meta["steps"] == STEPS
    assert "merged_from" not in meta  # the adapter folder it went through is gone
    # peft reads the adapter as trained: loaded on its base, it gives the merge peft makes
    (tmp_path / "peft").mkdir()
    write_in_memory(tmp_path / "adapter", tokenizer, tmp_path / "peft", "float32")
    ours, peft_merged = (load_file(tmp_path / name / "model.safetensors")
                         for name in ("merged", "peft"))  # fmt: skip
    assert ours.keys() == peft_merged.keys()
    assert all(torch.equal(ours[k], peft_merged[k]) for k in ours)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(ours[q], load_file(lora_run["base"] / "model.safetensors")[q])


def test_a_half_precision_merge_never_holds_the_base_in_fp32(
    lora_run: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Folded in bf16 (the HF engine on a GPU), the base is loaded in bf16 itself: a 13B
    base takes 26 GB of host memory, not 52 in fp32 first. The weights are the fp32
    merge's, rounded: within a bf16 step of the tensor's largest weights (this base is saved
    in fp32, so its weights are rounded before the update is added, then the sum; a base
    saved in half precision, as LLaMA's are, merged bit for bit the same on a 105M model)."""
    from selfee.adapter import load_merged

    loaded = []
    original = AutoModelForCausalLM.from_pretrained

    def recording(*args: object, **kwargs: object) -> object:
        loaded.append(kwargs.get("dtype"))
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", recording)
    tokenizer = AutoTokenizer.from_pretrained(lora_run["adapter"])
    half = load_merged(lora_run["adapter"], tokenizer, torch.bfloat16).state_dict()
    assert loaded == [torch.bfloat16]
    full = load_merged(lora_run["adapter"], tokenizer, torch.float32).state_dict()
    assert half.keys() == full.keys()
    for name, weight in half.items():
        assert weight.dtype == torch.bfloat16
        reference = full[name].to(torch.bfloat16).float()
        step = 2**-7 * float(reference.abs().max())  # bf16 keeps 8 significant bits
        assert float((weight.float() - reference).abs().max()) <= 2 * step, name


def test_the_gguf_export_folds_an_adapter_in_first(lora_run: dict, tmp_path: Path) -> None:
    """llama.cpp's converter reads a full model: the export merges the adapter into a folder
    of its output, converts that, measures the file against it and removes it."""
    summary = run_export(ExportGGUFConfig(model=lora_run["adapter"], output=tmp_path / "gguf",
                                          quant=["f16"], prompts=2, max_new_tokens=8))  # fmt: skip
    [f16] = summary["files"]
    assert Path(f16["file"]).name == f"{lora_run['adapter'].name}-f16.gguf"
    assert summary["model"] == str(lora_run["adapter"])
    assert f16["greedy_identical_percent"] == 100.0 and f16["mean_abs_logit_diff"] < 1e-2
    assert sorted(p.name for p in (tmp_path / "gguf").iterdir() if p.name.startswith(".")) == []
    # the file is the merged model's, not the bare base's
    from selfee.engines.llama_cpp import LlamaCppEngine

    request = CompletionRequest(prompt="### Human: What color is the car?\n\n### Assistant:",
                                stop=(), max_tokens=8)  # fmt: skip
    gguf = LlamaCppEngine(f16["file"])
    try:
        assert gguf.complete(request).ids == HFEngine.load(lora_run["merged"]).complete(request).ids
    finally:
        gguf.close()


def test_what_needs_a_full_model_refuses_an_adapter(lora_run: dict, tmp_path: Path) -> None:
    adapter = lora_run["adapter"]
    assert check_model(adapter) == "hf"
    with pytest.raises(DeltaError, match="is a LoRA adapter: it already is a small delta"):
        make_delta(lora_run["base"], adapter, tmp_path / "delta")
    moved = tmp_path / "moved"
    moved.mkdir()
    for part in adapter.iterdir():
        (moved / part.name).write_bytes(part.read_bytes())
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (moved / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"whose base model .*gone is not a Hugging Face model"):
        check_model(moved)


def test_qlora_trains_on_a_4bit_base_and_exports_a_full_model(lora_run: dict) -> None:
    """QLoRA on CPU (bitsandbytes' CPU backend): the same Ray Train + DeepSpeed path as on
    CUDA, in bf16 as there, the base's linear layers held in 4 bits by every worker."""
    folder = lora_run["folder"]
    cfg = tiny_config(folder / "chains.jsonl", folder / "qlora", model=str(lora_run["base"]),
                      adapter="qlora", lora={"rank": 16, "alpha": 32, "dropout": 0.0},
                      max_steps=16, learning_rate=3e-3, checkpoint_every_steps=8,
                      max_context=256, precision="bf16")  # fmt: skip
    summary = run_train(cfg)
    assert summary["steps"] == 16
    assert summary["final_loss"] < summary["first_loss"] - 0.2, [
        h["loss"] for h in summary["history"]
    ]
    # what the workers held: 4-bit linear weights pack two to a byte, so fewer parameters
    # than the same base held for LoRA (embeddings, head and norms stay whole)
    # DeepSpeed trained in bf16, as a GPU run does (its bf16 optimizer's states)
    assert list(Path(summary["checkpoints"]).glob("checkpoint_*/deepspeed/bf16_zero_pp_rank_*"))
    qlora_held = summary["history"][0]["parameters_loaded"]
    lora_held = lora_run["summary"]["history"][0]["parameters_loaded"]
    assert qlora_held < 0.8 * lora_held, (qlora_held, lora_held)
    # the merged export: the adapter folded into the base (read whole, not in 4 bits), bf16
    # after a bf16 run
    merged = load_file(Path(summary["model"]) / "model.safetensors")
    base = load_file(lora_run["base"] / "model.safetensors")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert merged[q].dtype == torch.bfloat16 and merged[q].shape == base[q].shape
    assert not torch.equal(merged[q], base[q])
    assert json.loads((Path(summary["model"]) / "selfee.json").read_text())["adapter"] == {
        "kind": "qlora", "export": "merged"}  # fmt: skip
    request = CompletionRequest(prompt="### Human: What color is the car?\n\n### Assistant:",
                                stop=(), max_tokens=8)  # fmt: skip
    assert len(HFEngine.load(summary["model"], device="cpu").complete(request).ids) == 8


def test_qlora_without_a_usable_bitsandbytes_is_refused_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import bitsandbytes

    import selfee.train.job

    monkeypatch.setattr(selfee.train.job, "ray_runtime", lambda *a: pytest.fail("Ray started"))
    chains = tmp_path / "c.jsonl"
    write_jsonl(chains, make_chains(4))
    base = write_pad_less_base(tmp_path / "base")
    cfg = tiny_config(chains, tmp_path / "o", model=str(base), adapter="qlora")

    def cannot(*args: object, **kwargs: object) -> None:
        raise NotImplementedError("no CPU kernel")

    monkeypatch.setattr(bitsandbytes.functional, "quantize_4bit", cannot)
    with pytest.raises(ValueError, match=r"qlora on a CPU: bitsandbytes .* cannot quantize on "
                       r"CPUs \(NotImplementedError\); install bitsandbytes>=0.50"):  # fmt: skip
        run_train(cfg)
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # not installed
    with pytest.raises(ValueError, match=r"bitsandbytes, which is not installed: pip install "
                       r"'selfee\[qlora\]'"):  # fmt: skip
        run_train(cfg)
    assert not (tmp_path / "o" / "manifest.json").exists()  # nothing recorded


def test_adapter_settings_are_checked_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="the tiny model starts random, with nothing to"):
        tiny_config(tmp_path / "c.jsonl", tmp_path / "o", adapter="lora")
    done = subprocess.run(
        [sys.executable, "-m", "selfee.cli", "train", "--adapter", "qlora", "--data",
         str(tmp_path / "c.jsonl")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert done.returncode == 2 and len(errors) == 1, done.stderr
    assert "the tiny model starts random" in errors[0] and "Traceback" not in done.stderr
