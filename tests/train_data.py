"""Small chain sets for training tests: templated, so a tiny model learns them in seconds."""

from __future__ import annotations

import random
from typing import Any

COLORS = ["red", "blue", "green", "yellow", "black", "white", "purple", "orange"]
THINGS = ["apple", "car", "house", "bird", "river", "book", "lamp", "chair"]


def make_chains(n: int, seed: int = 0, revisions: int = 1) -> list[dict[str, Any]]:
    """``n`` chains: an answer, feedback that asks for a revision, then revisions until the
    last feedback says "Revision is not needed."."""
    rng = random.Random(seed)
    chains = []
    for i in range(n):
        color, thing = rng.choice(COLORS), rng.choice(THINGS)
        outputs = [{"output": f"The {thing} is {color}.", "feedback": ""}]
        for k in range(revisions):
            outputs[-1]["feedback"] = (
                f"The answer names the color but not why. Score: {5 + k}. Revision is needed."
            )
            outputs.append({"output": f"The {thing} is {color} because it was painted {color}."})
        outputs[-1]["feedback"] = "The answer is complete. Score: 9. Revision is not needed."
        chains.append(
            {
                "id": f"c{i}",
                "dataset": "synthetic",
                "instruction": f"What color is the {thing}?",
                "input": "" if i % 3 else f"Look at the {thing}.",
                "output": "",
                "outputs": outputs,
                "iteration": len(outputs),
                "iteration_truncated": False,
                "error": None,
            }
        )
    return chains
