"""SelFee on Ray Serve (OpenAI-compatible, revision control per request).

serve run configs/serve/selfee.yaml                          # the config's model and replicas
serve run serve_apps.selfee_app:build model=outputs/quickstart/train/model
"""

from selfee.serve.app import build

__all__ = ["build"]
