"""Every command the README shows exists and its arguments parse (a newcomer copies them verbatim)."""

import re
import shlex
import subprocess
import sys

import pytest

from common.config import load_config
from common.experiment import load_paper
from common.paths import REPO_ROOT


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (REPO_ROOT / "README.md").read_text(), flags=re.S)
    lines = [line.split("#", 1)[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line]


def nox_sessions() -> set[str]:
    listing = subprocess.run(
        [sys.executable, "-m", "nox", "-l"], cwd=REPO_ROOT, capture_output=True, text=True
    )
    return {m.group(1) for m in re.finditer(r"^[*-] (\S+)", listing.stdout, flags=re.M)}


def reproduce_args(words: list[str]) -> tuple[str, list[str]] | None:
    """(paper, overrides) of a reproduction command, or None for any other command."""
    if (
        words[1:2] == ["-s"]
        and words[0].endswith("nox")
        and words[2].startswith("reproduce-")
        and words[2] != "reproduce-all"
    ):
        return words[2][len("reproduce-") :], words[4:] if words[3:4] == ["--"] else []
    if "common.reproduce" in words:
        rest = words[words.index("common.reproduce") + 1 :]
        return rest[0], rest[1:]
    return None


def test_the_readme_shows_commands():
    commands = readme_commands()
    assert any(c.endswith("nox -s reproduce-mamba") for c in commands)  # the flagship, first
    assert ".venv/bin/nox -s tests" in commands  # the test command .ci/run calls


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command):
    words = shlex.split(command.split("&&")[-1])
    if words[0].endswith("nox") and "-s" in words:
        session = words[words.index("-s") + 1]
        if "my-idea" not in session:  # made by the README's own new-paper line
            assert session in nox_sessions(), f"README names nox session '{session}' that does not exist"
    parsed = reproduce_args(words)
    if parsed is None or parsed[0] == "my-idea":
        return
    paper, overrides = parsed
    loaded = load_paper(paper)
    load_config(loaded.schema, loaded.path / "configs", overrides)  # raises on a bad key or value
