"""The README's two opening commands work as written."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def opening_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", readme, re.S)
    assert block, "README opens with no sh block"
    return [line.split("#", 1)[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_the_readme_opens_with_the_demo_and_the_test_command():
    assert opening_commands() == ["sh scripts/demo.sh", "sh scripts/test.sh"]


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()

    assert "exec sh scripts/test.sh" in ci


def test_the_demo_command_answers_a_real_request_through_an_embedded_nats(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KRT_")}
    env["KRT_MEASUREMENTS_FILE"] = str(tmp_path / "measurements.lp")  # not into the checkout

    result = subprocess.run(
        opening_commands()[0], shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "** Hello, Ada! **" in result.stdout
    assert "node_elapsed_time" in (tmp_path / "measurements.lp").read_text()
