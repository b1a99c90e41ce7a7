"""The README stays true: every command is documented, CI installs and tests exactly as it says."""

import re
from pathlib import Path

import typer.main

from nccli.cli import app

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_command_is_in_the_readme():
    commands = typer.main.get_command(app).commands
    assert set(commands) >= {"analyze", "report", "extract", "layers", "plot", "demo"}
    for name in commands:
        assert f"nccli {name}" in README, f"`nccli {name}` is not documented in README.md"


def test_ci_runs_the_readme_install_and_test_commands():
    ci = (ROOT / ".ci" / "run").read_text()
    install = re.search(r"^pip install .*$", ci, re.MULTILINE).group(0)
    test = re.search(r"^python -m pytest.*$", ci, re.MULTILINE).group(0)
    assert install in README and test in README


def test_readme_figure_exists():
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README):
        assert (ROOT / image).is_file(), image


def test_every_report_column_is_explained_in_the_readme_as_the_registry_says():
    """'How to read the numbers' has one row per metric column: its meaning and collapsed value from schema.METRICS."""
    from nccli import schema

    for column in schema.METRICS:
        meaning = column.meaning.replace("|", "\\|")
        assert f"| `{column.name}` | {meaning} | {column.collapsed} |" in README, column.name
