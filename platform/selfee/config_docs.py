"""Every config key of every command, as Markdown (``docs/configuration.md`` is this output).

python -m selfee.config_docs > docs/configuration.md
"""

from __future__ import annotations

from selfee.cli import COMMANDS, Command
from selfee.config_cli import leaf_fields

HEADER = (
    "# Configuration keys\n\n"
    "Generated from each stage's pydantic model (`selfee/<stage>/config.py`, on the shared "
    "base in `selfee/config.py`; `python -m selfee.config_docs > "
    "docs/configuration.md`; a test checks it is current). Each key is a YAML key of the "
    "stage's config file and a command-line option of the same name: `max_new_tokens` is "
    "`--max-new-tokens`, nested keys take dots (`--ray.address auto`), `none` clears an "
    "optional key.\n"
)


def _rows(command: Command, prefix: str) -> list[str]:
    if command.children:
        return [r for child in command.children for r in _rows(child, f"{prefix}{command.name} ")]
    assert command.config is not None
    where = f"`{command.config.__module__}.{command.config.__name__}`"
    lines = [f"\n## `selfee {prefix}{command.name}`\n", f"{command.help} ({where}).\n",
             "| key | default | what it does |", "|---|---|---|"]  # fmt: skip
    for dotted, _, info in leaf_fields(command.config):
        default = "required" if info.is_required() else info.get_default(call_default_factory=True)
        text = (info.description or "").replace("|", "\\|")
        lines.append(f"| `{dotted}` | `{default}` | {text} |")
    return lines


def render() -> str:
    return HEADER + "\n".join(r for c in COMMANDS for r in _rows(c, "")) + "\n"


if __name__ == "__main__":
    print(render(), end="")
