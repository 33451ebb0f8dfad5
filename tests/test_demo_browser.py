"""The Gradio demo in a real browser: headless Chromium (Debian's package) via Playwright,
talking to the SelFee endpoint on a local Ray Serve."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from ray import serve

from conftest import deploy_from_serve_config, deploy_selfee, free_port, taken_port
from selfee.serve.config import DemoConfig
from selfee.serve.demo import build_demo, chain_bubbles
from selfee.testing.chains import write_random_adapter
from selfee.testing.selfee_model import QUESTIONS

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium package is missing: `make test` installs it (apt-get)")
    return path


def test_chain_bubbles_follow_the_selfee_headers() -> None:
    text = "Red.\n\n### Feedback 1:\nWhy? Revision is needed.\n\n### Revision 1:\nBlood red."
    assert [b["content"].split("\n")[0] for b in chain_bubbles(text)] == [
        "**Answer**", "**Feedback 1**", "**Revision 1**",
    ]  # fmt: skip
    assert chain_bubbles(text)[2]["content"].endswith("Blood red.")


def chat_in_browser(url: str, screenshot: Path, model: str | None = None) -> str:
    """Send one question through the page (to ``model``, picked from the page's list: else
    the first listed); returns the chat's text once the final answer shows."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium(), headless=True, args=["--no-sandbox"]
        )
        page = browser.new_page(viewport={"width": 1200, "height": 1400})
        page.goto(url, wait_until="load")
        if model is not None:
            page.get_by_label("Model").click()
            page.get_by_role("option", name=model).click()
        page.get_by_placeholder("Ask something…").fill(QUESTIONS[0])
        page.get_by_role("button", name="Send").click()
        page.get_by_text("Final answer").wait_for(timeout=60_000)
        chat = page.locator("#selfee-chat").inner_text()
        screenshot.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    return chat


def check_bubbles(chat: str, screenshot: Path) -> None:
    assert QUESTIONS[0] in chat
    for title in ["Answer", "Feedback 1", "Revision 1", "Feedback 2", "Final answer"]:
        assert title in chat
    assert "because it was painted" in chat  # the revision's text made it to the page
    assert screenshot.stat().st_size > 10_000


def test_selfee_demo_shows_answer_feedback_and_revision_bubbles(
    ray_session: None, selfee_model_dir: Path, tmp_path: Path
) -> None:
    """``selfee demo --endpoint URL``: Gradio's own server, talking to the Serve endpoint,
    which serves an adapter beside the model (one that changes nothing): the page lists
    both and the one picked answers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    write_random_adapter(AutoModelForCausalLM.from_pretrained(selfee_model_dir), selfee_model_dir,
                         tmp_path / "copy", AutoTokenizer.from_pretrained(selfee_model_dir),
                         rank=4, std=0.0)  # fmt: skip
    endpoint = deploy_selfee(selfee_model_dir, adapters={"copy": str(tmp_path / "copy")})
    port = free_port()
    demo = build_demo(DemoConfig(endpoint=endpoint, port=port))
    demo.queue().launch(
        server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True
    )
    try:
        chat = chat_in_browser(f"http://127.0.0.1:{port}/", ARTIFACTS / "demo-chat.png", "copy")
    finally:
        demo.close()
        serve.shutdown()
    check_bubbles(chat, ARTIFACTS / "demo-chat.png")
    assert "Final answer (copy: " in chat


def test_demo_deployed_next_to_the_serve_app(ray_session: None, selfee_model_dir: Path) -> None:
    """The demo application of ``configs/serve/selfee.yaml``, at /demo on the same port."""
    endpoint = deploy_selfee(selfee_model_dir)
    port = int(endpoint.split(":")[-1].split("/")[0])
    demo_url = deploy_from_serve_config("selfee.yaml", "demo", port, endpoint=endpoint)
    try:
        chat = chat_in_browser(demo_url + "/", ARTIFACTS / "demo-on-serve.png")
    finally:
        serve.shutdown()
    check_bubbles(chat, ARTIFACTS / "demo-on-serve.png")
    assert f"Final answer ({selfee_model_dir.name}: " in chat  # the only model, listed


LAUNCH_AND_RECORD = """
import socket, sys, time
asked = []
real_getaddrinfo, real_connect = socket.getaddrinfo, socket.socket.connect
def getaddrinfo(host, *args, **kwargs):
    asked.append(str(host))
    return real_getaddrinfo(host, *args, **kwargs)
def connect(self, address):
    asked.append(str(address[0]) if isinstance(address, tuple) else str(address))
    return real_connect(self, address)
socket.getaddrinfo, socket.socket.connect = getaddrinfo, connect
from selfee.serve.config import DemoConfig
from selfee.serve.demo import build_demo
demo = build_demo(DemoConfig(endpoint="http://127.0.0.1:9/v1", port=int(sys.argv[1])))
demo.queue().launch(server_name="127.0.0.1", server_port=int(sys.argv[1]),
                    prevent_thread_lock=True, share=False)
time.sleep(3)  # threads started at launch (analytics, version checks) get their chance
demo.close()
print("ASKED", sorted(set(asked)))
"""


def test_the_demo_makes_no_outbound_connection_at_launch() -> None:
    """Every host the demo's process looks up or connects to while it builds and launches
    is this machine (Gradio's analytics and version check would call api.gradio.app)."""
    import ast
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADIO_")}
    done = subprocess.run([sys.executable, "-c", LAUNCH_AND_RECORD, str(free_port())],
                          capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("ASKED"))
    asked = ast.literal_eval(line.removeprefix("ASKED "))
    assert asked, "the recorder saw nothing: the demo never listened"
    local = ("127.", "localhost", "::1", "0.0.0.0")
    assert [h for h in asked if not h.startswith(local)] == []


def test_the_demo_says_at_start_when_its_endpoint_would_not_answer(
    start_teacher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing listening, a refused key: one line at start (the user's first message would
    fail); an endpoint that answers: nothing to say."""
    from selfee.serve.demo import endpoint_problem

    closed = f"http://127.0.0.1:{free_port()}/v1"
    assert "nothing answers at" in (endpoint_problem(DemoConfig(endpoint=closed)) or "")
    monkeypatch.setenv("DEMO_TEST_KEY", "right-key")
    teacher = start_teacher(api_key_env="DEMO_TEST_KEY")
    assert (
        endpoint_problem(DemoConfig(endpoint=teacher.base_url, api_key_env="DEMO_TEST_KEY")) is None
    )
    monkeypatch.setenv("DEMO_TEST_KEY", "wrong-key")
    problem = endpoint_problem(DemoConfig(endpoint=teacher.base_url, api_key_env="DEMO_TEST_KEY"))
    assert problem is not None and "refused the key: set $DEMO_TEST_KEY" in problem
    assert "wrong-key" not in problem


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    with taken_port() as port:
        done = subprocess.run([sys.executable, "-m", "selfee.cli", "demo", "--port", str(port)],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert f"selfee demo: error: cannot listen on 127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr and "[demo] talking" not in done.stdout
