"""The README and docs/: the settings page is current, links resolve, and the commands they show are real."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from pathlib import Path

from krt_runner.cli import build_parser
from krt_runner.config import OPTIONS

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCED = re.compile(r"^```.*?^```", re.S | re.M)


def relative_links() -> list[tuple[Path, str]]:
    """(page, target) for every Markdown link outside code blocks that is not a URL."""
    links = []
    for page in PAGES:
        text = FENCED.sub("", page.read_text())
        links += [(page, target) for target in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in target]
    return links


def anchors(page: Path) -> set[str]:
    """GitHub's anchors for the page's headings: lower case, punctuation dropped, spaces as hyphens."""
    headings = re.findall(r"^#{1,6} (.+)$", FENCED.sub("", page.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def krt_runner_commands() -> list[list[str]]:
    """The arguments after `krt-runner` on every command line of every ```sh block, comments dropped."""
    commands = []
    for page in PAGES:
        for block in re.findall(r"^```sh\n(.*?)^```", page.read_text(), re.S | re.M):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                if "krt-runner" in words:
                    commands.append(words[words.index("krt-runner") + 1:])
    return commands


def subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_the_settings_page_is_what_its_script_writes():
    result = subprocess.run(
        [sys.executable, "scripts/settings_doc.py", "--check"], cwd=ROOT, capture_output=True, text=True
    )

    assert result.returncode == 0, result.stderr


def test_every_relative_link_points_to_an_existing_file():
    links = relative_links()

    missing = [f"{page.name}: {target}" for page, target in links if not (page.parent / target.split("#")[0]).exists()]

    assert links and not missing, missing


def test_every_link_anchor_names_a_heading_of_its_page():
    links = [(page, target) for page, target in relative_links() if "#" in target]

    missing = [f"{page.name}: {target}" for page, target in links if target.split("#")[1] not in anchors(
        page.parent / target.split("#")[0] if not target.startswith("#") else page)]

    assert links and not missing, missing


def test_the_readme_is_a_short_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()

    assert 0 < len(lines) <= 160


def test_every_krt_runner_command_shown_names_a_real_subcommand():
    commands = krt_runner_commands()

    unknown = [command for command in commands if not command or command[0] not in subparsers()]

    assert commands and not unknown, unknown


def test_every_flag_shown_with_krt_runner_run_is_a_setting_flag():
    flags = [word.split("=")[0] for command in krt_runner_commands() if command[:1] == ["run"]
             for word in command[1:] if word.startswith("--")]
    known = {option.flag for option in OPTIONS} | set(subparsers()["run"]._option_string_actions)

    assert flags and not set(flags) - known, set(flags) - known


def test_every_krt_runner_command_shown_parses():
    commands = krt_runner_commands()

    refused = []
    for command in commands:
        try:
            build_parser().parse_args(command)
        except SystemExit:
            refused.append(shlex.join(command))

    assert commands and not refused, refused
