"""Repository guarantees: the stdlib `platform` is never shadowed; CI fails on failure or no tests."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_import_platform_from_repo_root_is_the_standard_library() -> None:
    done = subprocess.run(
        [sys.executable, "-c", "import platform; print(platform.__file__)"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    stdlib = Path(sysconfig.get_paths()["stdlib"]).resolve()
    assert Path(done.stdout.strip()).resolve() == stdlib / "platform.py"


def test_platform_folder_is_a_source_root_not_a_package() -> None:
    assert not (REPO / "platform" / "__init__.py").exists()
    assert (REPO / "platform" / "selfee" / "__init__.py").exists()


def ci(tmp_path: Path, pytest_args: str) -> subprocess.CompletedProcess:
    # A `make test PYTEST_ARGS=...` around this test passes its variables down through
    # MAKEFLAGS; they would override ours and rerun the whole suite inside the probe.
    inherited = {
        k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")
    }
    env = {**inherited, "PYTEST_ARGS": pytest_args}
    return subprocess.run(
        ["bash", str(REPO / ".ci" / "run")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("test_body", "select", "passes"),
    [
        ("def test_ok():\n    assert 1 + 1 == 2\n", "", True),
        ("def test_broken():\n    assert 1 + 1 == 3\n", "", False),
        ("def test_ok():\n    assert True\n", "-k no_such_test_anywhere", False),
    ],
    ids=["passing", "failing", "none-ran"],
)
def test_ci_script_outcome(tmp_path: Path, test_body: str, select: str, passes: bool) -> None:
    test_file = tmp_path / "test_probe.py"
    test_file.write_text(test_body)
    done = ci(tmp_path, f"-p no:cacheprovider {select} {test_file}")
    assert (done.returncode == 0) is passes, done.stdout[-2000:] + done.stderr[-2000:]


def test_code_is_ruff_clean() -> None:
    ruff = Path(sys.executable).with_name("ruff")
    folders = ["platform", "jobs", "serve_apps", "tests", "bench"]
    done = subprocess.run([str(ruff), "check", *folders], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_no_module_imports_a_layer_above_it() -> None:
    """docs/architecture.md's layers: the core (and the engines, the LLM wing) never imports
    a stage, and a stage never imports the commands that run it (cli, quickstart)."""
    import ast

    commands = {"cli", "quickstart", "quickstart_config", "config_docs"}
    stages = {"collect", "augment", "train", "export", "infer", "eval", "judge", "serve"}
    package = REPO / "platform" / "selfee"
    upward = []
    for path in sorted(package.rglob("*.py")):
        own = path.relative_to(package).parts[0].removesuffix(".py")
        if own in commands or own == "testing":
            continue
        above = commands if own in stages else commands | stages
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else (
                [a.name for a in node.names] if isinstance(node, ast.Import) else [])  # fmt: skip
            upward += [f"{path.relative_to(package)} imports {name}" for name in names
                       if name.startswith("selfee.") and name.split(".")[1] in above]  # fmt: skip
    assert not upward, upward
