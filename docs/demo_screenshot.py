"""Makes docs/demo_streaming.png: the Gradio demo in headless Chromium while a chain streams.

    PYTHONPATH=. .venv/bin/python docs/demo_screenshot.py

The test model of tests/selfee_model.py on a local Ray Serve, the demo in front of it, two
forced revisions; the browser's network is throttled so that a picture can be taken while
the chain is still arriving (the page is saved every 0.3 s until the final answer shows).
"""

import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import ray  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402
from ray import serve  # noqa: E402

from conftest import deploy_selfee, free_port  # noqa: E402
from selfee.serve.config import DemoConfig  # noqa: E402
from selfee.serve.demo import build_demo  # noqa: E402
from selfee_model import QUESTIONS, train_selfee_model  # noqa: E402


def main(out: Path = REPO / "docs" / "demo_streaming.png") -> None:
    model = train_selfee_model(Path("/tmp/selfee-demo-model"))
    ray.init(num_cpus=2, include_dashboard=False)
    port = free_port()
    demo = build_demo(DemoConfig(endpoint=deploy_selfee(model), port=port))
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                    args=["--no-sandbox"])  # fmt: skip
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(f"http://127.0.0.1:{port}/", wait_until="load")
        page.get_by_placeholder("Ask something…").fill(QUESTIONS[0])
        minimum = page.locator("input[type=number]").nth(2)  # "Minimum revisions"
        minimum.fill("2")
        minimum.press("Enter")
        cdp = page.context.new_cdp_session(page)
        cdp.send("Network.enable")
        cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 250,
                 "downloadThroughput": 6000, "uploadThroughput": 100000})  # fmt: skip
        page.get_by_role("button", name="Send").click()
        deadline = time.time() + 120
        while time.time() < deadline:
            text = page.locator("#selfee-chat").inner_text()
            if "Final answer" in text:
                break
            if "Feedback 2" in text:  # mid-chain: keep the latest such picture
                page.screenshot(path=str(out))
            time.sleep(0.3)
        browser.close()
    demo.close()
    serve.shutdown()
    ray.shutdown()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
