"""The Gradio demo: chat with a SelFee endpoint and watch it answer, critique and revise.

A client of the OpenAI-compatible endpoint (``selfee serve``, or any server that returns the
``selfee`` object), through the ``openai`` package. The answer, each "Feedback k" and each
"Revision k" are separate bubbles that appear as the chain streams in, then the final
answer. Later turns send only the final answers of earlier ones, as the endpoint expects.
The model is picked from the endpoint's list (an endpoint serving several adapters of one
base lists each).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from selfee.chain import parse_generation
from selfee.config import TAKE_EVERY_REQUEST
from selfee.serve.config import DemoConfig

Message = dict[str, str]


def chain_bubbles(text: str) -> list[Message]:
    """One assistant bubble per part of the chain, titled like the SelFee headers."""
    bubbles = []
    for segment in parse_generation(text).segments:
        if segment.kind == "answer":
            title = "Answer"
        else:
            title = f"{segment.kind.title()} {segment.number}"
        body = segment.text.strip() or "…"
        bubbles.append({"role": "assistant", "content": f"**{title}**\n\n{body}"})
    return bubbles


def final_bubble(answer: str, selfee: dict[str, Any], model: str) -> Message:
    why = {
        "verdict": "the model said no revision is needed",
        "eos": "the model ended",
        "max_revisions": "the maximum number of revisions was reached",
        "budget": "the token budget was spent",
    }.get(selfee.get("finish_reason", ""), "")
    counts = (
        f"{selfee.get('revisions_count', 0)} revisions, {selfee.get('forced_rewrites', 0)} forced"
    )
    return {"role": "assistant",
            "content": f"**Final answer** ({model}: {counts}; {why})\n\n{answer}"}  # fmt: skip


def build_demo(cfg: DemoConfig) -> Any:
    """Local only means it: Gradio's analytics and version check (calls to api.gradio.app
    at launch) are off for the whole process; the only connection is to ``cfg.endpoint``."""
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    import gradio as gr
    import openai

    client = openai.OpenAI(
        base_url=cfg.endpoint, api_key=os.environ.get(cfg.api_key_env) or "none", max_retries=1
    )

    def list_models() -> Any:
        """The page's model choices, asked of the endpoint as the page loads (an endpoint
        down then: none, and each message asks again)."""
        try:
            names = [m.id for m in client.models.list().data]
        except openai.OpenAIError:
            names = []
        return gr.Dropdown(choices=names, value=names[0] if names else None)

    def respond(
        message: str, shown: list[Message], history: list[Message], model: str | None,
        temperature: float, max_tokens: float, min_revisions: float, max_revisions: float,
    ) -> Iterator[tuple[list[Message], list[Message], str]]:  # fmt: skip
        if not message.strip():
            yield shown, history, ""
            return
        shown = [*shown, {"role": "user", "content": message}]
        asked = [*history, {"role": "user", "content": message}]
        yield shown, history, ""
        text, answer, selfee = "", "", {}
        try:
            model = model or client.models.list().data[0].id  # the endpoint's first
            with client.chat.completions.create(
                model=model, messages=asked, stream=True, temperature=temperature,  # type: ignore[arg-type]
                max_tokens=int(max_tokens),
                extra_body={"min_revisions": int(min_revisions), "max_revisions": int(max_revisions),
                            "stream_content": "final_answer"},
            ) as stream:  # fmt: skip
                for chunk in stream:  # the chain arrives token by token in selfee.delta
                    selfee = (chunk.model_extra or {}).get("selfee") or {}
                    text = text[: selfee.get("replace_from", len(text))] + selfee.get("delta", "")
                    if chunk.choices and chunk.choices[0].delta.content:
                        answer += chunk.choices[0].delta.content
                    if selfee.get("delta") or "text" in selfee:
                        yield [*shown, *chain_bubbles(selfee.get("text", text))], history, ""
        except openai.APIStatusError as e:
            detail = (
                (e.body or {}).get("message", e.message) if isinstance(e.body, dict) else e.message
            )
            yield (
                [
                    *shown,
                    {"role": "assistant", "content": f"**Error** (HTTP {e.status_code}): {detail}"},
                ],
                history,
                "",
            )
            return
        except openai.APIConnectionError:
            yield (
                [
                    *shown,
                    {"role": "assistant", "content": f"**Error**: cannot reach {cfg.endpoint}"},
                ],
                history,
                "",
            )
            return
        shown = [*shown, *chain_bubbles(text), final_bubble(answer, selfee, model)]
        yield shown, [*asked, {"role": "assistant", "content": answer}], ""

    with gr.Blocks(title="SelFee", analytics_enabled=False) as demo:
        gr.Markdown(
            "# SelFee\nThe model answers, critiques its answer and revises it until the critique "
            f"says *Revision is not needed.* Endpoint: `{cfg.endpoint}`"
        )
        chatbot = gr.Chatbot(
            label="SelFee", height=560, group_consecutive_messages=False, elem_id="selfee-chat"
        )
        history = gr.State([])
        with gr.Row():
            box = gr.Textbox(placeholder="Ask something…", show_label=False, scale=5)
            send = gr.Button("Send", variant="primary", scale=1)
            stop = gr.Button("Stop", scale=1)
        with gr.Row():
            model = gr.Dropdown([], label="Model", allow_custom_value=True, scale=2)
            temperature = gr.Slider(0, 2, value=0, step=0.05, label="Temperature")
            max_tokens = gr.Slider(16, 2048, value=512, step=16, label="Max new tokens")
            min_revisions = gr.Slider(0, 10, value=0, step=1, label="Minimum revisions")
            max_revisions = gr.Slider(0, 10, value=10, step=1, label="Maximum revisions")
        inputs = [box, chatbot, history, model, temperature, max_tokens, min_revisions,
                  max_revisions]  # fmt: skip
        outputs = [chatbot, history, box]
        demo.load(list_models, None, model)
        sent = send.click(respond, inputs, outputs)
        submitted = box.submit(respond, inputs, outputs)
        stop.click(None, None, None, cancels=[sent, submitted])
    return demo


def endpoint_problem(cfg: DemoConfig, timeout_s: float = 3.0) -> str | None:
    """Why the endpoint would not answer a chat now (nothing listening, the key refused), or
    None: said at start, not at the user's first message. The demo starts either way (the
    endpoint may come up later); each message tries again."""
    import openai

    client = openai.OpenAI(base_url=cfg.endpoint, max_retries=0, timeout=timeout_s,
                           api_key=os.environ.get(cfg.api_key_env) or "none")  # fmt: skip
    try:
        client.models.list()
    except openai.APIConnectionError:
        return (f"nothing answers at {cfg.endpoint} yet: start one (`selfee serve`) or give "
                "--endpoint URL")  # fmt: skip
    except openai.AuthenticationError:
        return f"{cfg.endpoint} refused the key: set ${cfg.api_key_env}"
    except openai.APIStatusError as e:
        return f"{cfg.endpoint} answered {e.status_code} to GET /models: is it OpenAI-compatible?"
    return None


def run_demo(cfg: DemoConfig) -> None:
    from selfee.teacher.server import bind_socket

    bind_socket(cfg.host, cfg.port).close()  # a taken port: one line (Gradio's names its internals)
    demo = build_demo(cfg)
    print(f"[demo] talking to {cfg.endpoint}; open http://{cfg.host}:{cfg.port}", flush=True)
    if (problem := endpoint_problem(cfg)) is not None:
        print(f"[demo] warning: {problem}; each message tries again", flush=True)
    demo.queue().launch(server_name=cfg.host, server_port=cfg.port, share=cfg.share)


def demo_application(cfg: DemoConfig) -> Any:
    """The demo as a Ray Serve app, next to the SelFee app (``configs/serve/selfee.yaml``):
    the Gradio app mounted in a FastAPI app, served by one replica."""
    from ray import serve

    def build_asgi_app() -> Any:  # a plain function: Serve calls it on the replica
        import gradio as gr
        from fastapi import FastAPI

        return gr.mount_gradio_app(FastAPI(), build_demo(cfg).queue(), path="/")

    deployment = serve.deployment(  # every open browser holds a request
        name="SelFeeDemo", num_replicas=1, ray_actor_options={"num_cpus": 0},
        max_ongoing_requests=TAKE_EVERY_REQUEST,
    )(serve.ingress(build_asgi_app)())  # fmt: skip
    return deployment.bind()


def build(args: dict[str, Any]) -> Any:
    """Builder for ``serve run``: args are ``DemoConfig`` keys (``endpoint``)."""
    return demo_application(DemoConfig.model_validate(args))
