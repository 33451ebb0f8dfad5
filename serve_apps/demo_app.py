"""The Gradio demo on Ray Serve, next to the SelFee app (see configs/serve/selfee.yaml).

serve run serve_apps.demo_app:build endpoint=http://127.0.0.1:8000/v1
"""

from selfee.serve.demo import build

__all__ = ["build"]
