"""The end-to-end slice on the shared local Ray: outputs meet the Chain contract."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import free_port
from selfee.chain import Verdict, detect_verdict, parse, render_prompt, render_target
from selfee.config import QuickstartConfig, TeacherConfig
from selfee.quickstart import run_quickstart, sample_instructions_path
from selfee.records import make_instruction, read_jsonl, write_jsonl


def test_quickstart_slice_writes_valid_chains(serve_cleanup: None, tmp_path: Path) -> None:
    instructions = tmp_path / "instructions.jsonl"
    rows = [make_instruction("alpaca", f"Explain idea number {i}.") for i in range(10)]
    write_jsonl(instructions, rows)
    cfg = QuickstartConfig(
        output_dir=tmp_path / "out",
        instructions=instructions,
        max_iterations=2,
        serve_port=free_port(),
        teacher=TeacherConfig(needed_fraction=0.5, later_needed_fraction=1.0),
    )
    summary = run_quickstart(cfg)

    chains = list(read_jsonl(tmp_path / "out" / "augment" / "chains.jsonl"))
    assert [c["id"] for c in chains] == [r["id"] for r in rows]  # every input, once, in order
    for chain in chains:
        assert chain["error"] is None
        assert chain["iteration"] == len(chain["outputs"]) >= 1
        first = detect_verdict(chain["outputs"][0]["feedback"])
        # later critiques always ask for more here, so chains either stop at once or hit the cap
        assert (first is Verdict.NOT_NEEDED) == (chain["iteration"] == 1)
        assert (chain["stop_reason"] == "max_iterations") == (chain["iteration"] == 2)
        text = render_prompt(chain["instruction"]) + render_target(chain["outputs"])
        assert parse(text).steps == chain["outputs"]
    assert 0 < summary["stopped_at_max_iterations"] < 10
    assert summary["round_trip_ok"] == 10
    assert summary["teacher"]["requests"] == sum(c["usage"]["requests"] for c in chains)
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["iterations"] == {str(k): v for k, v in summary["iterations"].items()}
    previews = list(read_jsonl(tmp_path / "out" / "sft_preview.jsonl"))
    assert len(previews) == 10 and previews[0]["prompt"].endswith("### Answer:\n")


def test_shipped_samples_are_instruction_rows() -> None:
    rows = list(read_jsonl(sample_instructions_path()))
    assert len(rows) >= 10
    for row in rows:
        assert set(row) == {"id", "dataset", "instruction", "input", "output", "meta"}
        assert row["id"] == make_instruction(row["dataset"], row["instruction"], row["input"])["id"]
