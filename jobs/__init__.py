"""Entrypoints for `ray job submit --working-dir . -- python -m jobs.<stage> ...`.

A job runs with the Python of the cluster it is submitted to. Where that Python has this
project installed (the image of a real cluster, or this repo's .venv on a head started by
cluster/local.sh) it is used; where it has the dependencies but not the package, the copy
of the repo that ``--working-dir .`` uploads is put on the path.
"""

import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("selfee") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))
