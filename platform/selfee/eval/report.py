"""The eval report as a table and as a plot (the numbers come from ``selfee.eval.turns``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selfee import plots
from selfee.tables import columns


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _interval(ci: list[float] | None) -> str:
    return "-" if not ci else f"[{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _number(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:g}{unit}"


def format_table(summary: dict[str, Any]) -> str:
    """The report's tables; for several models (``{"models": ...}``), each model's, then
    one row per model side by side."""
    if "models" not in summary:
        return _model_tables(summary)
    models = summary["models"]
    parts = [f"== {name} ==\n{_model_tables(one)}" for name, one in models.items()]
    return "\n\n".join([*parts, _comparison(models)])


def _comparison(models: dict[str, dict[str, Any]]) -> str:
    """Accuracy at each turn, autonomous and the baselines, a row per model."""
    turns = max(len(one["turns"]) for one in models.values())
    rows = [["model", "questions", "answer", *(f"revision {k}" for k in range(1, turns)),
             "autonomous", "first answer alone", "majority vote"]]  # fmt: skip
    for name, one in models.items():
        accuracy = [_percent(t["accuracy"]) for t in one["turns"]]
        baselines = one["baselines"]
        rows.append([
            name, str(one["n"]), *accuracy, *[""] * (turns - len(accuracy)),
            _percent((one["autonomous"] or {}).get("accuracy")),
            _percent((baselines.get("first_answer") or {}).get("accuracy")),
            _percent((baselines.get("majority_vote") or {}).get("accuracy")),
        ])  # fmt: skip
    task = next(iter(models.values()))["task"]
    return "\n".join([f"{task}: accuracy by model", *columns(rows)])


def _model_tables(summary: dict[str, Any]) -> str:
    flips = {f["to_turn"]: f for f in summary["flips"]}
    rows = [["turn", "accuracy", "95% CI", "wrong→right", "right→wrong"]]
    for t in summary["turns"]:
        flip = flips.get(t["turn"])
        rows.append([
            "answer" if t["turn"] == 0 else f"revision {t['turn']}", _percent(t["accuracy"]),
            _interval(t["ci"]), str(flip["wrong_to_right"]) if flip else "",
            str(flip["right_to_wrong"]) if flip else "",
        ])  # fmt: skip
    lines = [
        f"{summary['task']}: {summary['n']} questions scored ({summary['source']})",
        *columns(rows),
        "",
    ]
    verdict = summary["verdict"]
    counts = verdict["counts"]
    lines.append(
        f"'Revision is needed' as a detector of wrong answers: precision "
        f"{_percent(verdict['precision'])}, recall {_percent(verdict['recall'])} "
        f"(tp {counts['tp']}, fp {counts['fp']}, fn {counts['fn']}, tn {counts['tn']}, "
        f"no verdict {counts['no_verdict']})"
    )
    settings = [["setting", "accuracy", "95% CI", "tokens", "tokens/point", "note"]]
    forced = summary["forced"]
    settings.append([
        f"forced ({len(summary['turns']) - 1} revisions)", _percent(forced["accuracy"]),
        _interval(forced["ci"]), _number(forced["tokens"]), _number(forced["tokens_per_point"]),
        f"mean revisions {_number(forced['mean_revisions'])}",
    ])  # fmt: skip
    if auto := summary["autonomous"]:
        settings.append([
            "autonomous", _percent(auto["accuracy"]), _interval(auto["ci"]),
            _number(auto["tokens"]), _number(auto["tokens_per_point"]),
            f"mean revisions {_number(auto['mean_revisions'])}",
        ])  # fmt: skip
    baselines = summary["baselines"]
    if first := baselines.get("first_answer"):
        settings.append(["first answer alone", _percent(first["accuracy"]),
                         _interval(first["ci"]), _number(first["tokens"]),
                         _number(first["tokens_per_point"]), "greedy, no feedback"])  # fmt: skip
    if vote := baselines.get("majority_vote"):
        settings.append(["majority vote", _percent(vote["accuracy"]), _interval(vote["ci"]),
                         _number(vote["tokens"]), _number(vote["tokens_per_point"]),
                         f"{_number(vote['mean_samples'])} samples at the forced run's tokens"])  # fmt: skip
    lines += ["", *columns(settings)]
    unparsed = summary["unparsed"]
    lines.append(
        f"\nno answer could be read in {unparsed['turns']} turn(s), "
        f"{unparsed['autonomous']} autonomous answer(s), {unparsed['samples']} sample(s): "
        "counted as wrong"
    )
    for key, what in (("without_gold", "questions without a usable gold (left out)"),
                      ("without_answer", "questions without an answer (left out)"),
                      ("answers_without_question", "answers whose question is not in the file"),
                      ("failed_generations", "generations that failed (re-run to retry)")):  # fmt: skip
        if summary.get(key):
            lines.append(f"{len(summary[key])} {what}")
    if summary.get("sandbox"):
        lines.append("programs: " + ", ".join(f"{k} {v}" for k, v in summary["sandbox"].items()))
    return "\n".join(lines)


def to_json(summary: dict[str, Any]) -> str:
    """One JSON object; for several models, ``{"models": {name: report}}``."""
    if "models" in summary:
        return json.dumps({"models": {n: _reported(one) for n, one in summary["models"].items()}},
                          indent=2)  # fmt: skip
    return json.dumps(_reported(summary), indent=2)


def _reported(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("task", "n", "turns", "flips", "verdict", "forced", "autonomous", "baselines",
            "unparsed", "questions", "without_gold", "without_answer",
            "answers_without_question", "failed_generations", "scored", "sandbox", "source")  # fmt: skip
    return {k: summary[k] for k in keys if k in summary}


def plot(summary: dict[str, Any], path: Path) -> Path:
    """Accuracy per turn with its 95% interval, the other settings as bands; flips below."""
    plt = plots.pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 7), sharex=True,
                                      gridspec_kw={"height_ratios": [3, 1.4]})  # fmt: skip
    xs = [t["turn"] for t in summary["turns"]]
    ys = [100 * (t["accuracy"] or 0) for t in summary["turns"]]
    lows = [y - 100 * (t["ci"] or [0, 0])[0] for y, t in zip(ys, summary["turns"], strict=True)]
    highs = [100 * (t["ci"] or [0, 0])[1] - y for y, t in zip(ys, summary["turns"], strict=True)]
    top.errorbar(xs, ys, yerr=[lows, highs], marker="o", capsize=4, color="#264653",
                 label="forced revisions (turn k)")  # fmt: skip
    others = [("autonomous", summary.get("autonomous"), "#2a9d8f"),
              ("first answer alone", summary["baselines"].get("first_answer"), "#e9c46a"),
              ("majority vote, equal tokens", summary["baselines"].get("majority_vote"),
               "#e76f51")]  # fmt: skip
    for name, entry, color in others:
        if entry and entry.get("accuracy") is not None and entry.get("ci"):
            top.axhline(100 * entry["accuracy"], color=color, linestyle="--", label=name)
            top.axhspan(100 * entry["ci"][0], 100 * entry["ci"][1], color=color, alpha=0.12)
    top.set_ylabel("accuracy, % (95% bootstrap CI)")
    top.set_ylim(0, 100)
    top.set_title(f"{summary['task']}: does revision help? ({summary['n']} questions)")
    top.legend(loc="best", fontsize=8)
    flips = summary["flips"]
    at = [f["to_turn"] for f in flips]
    bottom.bar(at, [f["wrong_to_right"] for f in flips], color="#2a9d8f", label="wrong → right")
    bottom.bar(at, [-f["right_to_wrong"] for f in flips], color="#e76f51", label="right → wrong")
    bottom.axhline(0, color="black", linewidth=0.8)
    bottom.set_ylabel("answers flipped")
    bottom.set_xlabel("turn (0 = answer, k = revision k)")
    bottom.set_xticks(xs)
    bottom.legend(loc="best", fontsize=8)
    return plots.save(fig, path)
