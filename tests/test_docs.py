"""The README stays true: every command is documented, CI installs and tests exactly as it says, the commands it
shows run as written, and its random-features numbers are the ones ``docs/random_features.py`` stored."""

import importlib.util
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from h5files import good_file

import nccli
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


# --------------------------------------------------------------------------- the README's commands, run as written

RUN = ("analyze", "info", "report", "plot")
OUTPUT_OPTIONS = ("--out", "-o", "--classes", "--pairs", "--output", ">")
EPOCHS = (1, 2, 10)
LAYOUT = {
    # path: (split, epoch); all from model 'resnet18', as the Workflow's step 1 writes them
    **{f"features/{split}/epoch_{epoch}.h5": (split, epoch) for split in ("train", "test") for epoch in EPOCHS},
    "features/val.h5": ("test", None),  # the torchrun sections' index
    **{f"{split}/epoch_{epoch}.h5": (split, epoch) for split in ("train", "test") for epoch in EPOCHS},
    "convnext.h5": ("train", None),  # the timm example's file
}


def readme_commands() -> list[str]:
    """The ``nccli analyze|info|report|plot`` command lines of the README's bash blocks (continuation lines joined,
    comments dropped) and inline code, in the order they appear. Synopses (``FILE...``, ``[--format ...]``) are
    not commands. Not run at all: ``nccli extract``/``layers`` (datasets, torchvision models), ``torchrun``/``srun``
    lines (GPUs, several processes), ``nccli convert``'s examples (the user's own arrays), ``nccli demo``
    (tests/test_demo.py)."""
    found = []
    for block, inline in re.findall(r"```bash\n(.*?)```|`(nccli [^`]*)`", README, re.DOTALL):
        lines = block.replace("\\\n", " ").splitlines() if block else [inline]
        for line in lines:
            command = " ".join(re.sub(r"\s#.*$", "", line).split())
            words = command.split()
            if (
                len(words) > 2
                and words[0] == "nccli"
                and words[1] in RUN
                and "..." not in command
                and "[" not in command
            ):
                found.append(command)
    return list(dict.fromkeys(found))


COMMANDS = readme_commands()


def named_outputs(command: str) -> list[str]:
    """What ``command`` says it writes: the values of --out, --classes, --pairs, --output, and a ``>`` redirect."""
    words = shlex.split(command)
    return [value for option, value in itertools.pairwise(words) if option in OUTPUT_OPTIONS]


def needs_missing_package(command: str) -> str | None:
    """Why ``command`` cannot run here (an optional package it needs is missing), or None."""
    if command.split()[1] == "plot" and importlib.util.find_spec("matplotlib") is None:
        return "matplotlib is not installed (pip install 'nccli[plot]')"
    return None


@pytest.fixture(scope="module")
def readme_runs(tmp_path_factory):
    """Every README command run through bash, in README order, in one folder holding the README's feature files;
    each command's named outputs are removed first, so that what is found afterwards is its own."""
    folder = tmp_path_factory.mktemp("readme")
    for seed, (path, (split, epoch)) in enumerate(LAYOUT.items()):
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        good_file(folder / path, seed=seed, split=split, epoch=epoch, model="resnet18")
    scripts = Path(sys.executable).parent  # this environment's `nccli`
    assert shutil.which("nccli", path=str(scripts)), f"no `nccli` script in {scripts}: pip install -e ."
    env = {**os.environ, "PATH": f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}", "CUDA_VISIBLE_DEVICES": ""}
    runs = {}
    for command in COMMANDS:
        if needs_missing_package(command):
            continue
        for output in map(folder.joinpath, named_outputs(command)):
            if output.is_dir():
                shutil.rmtree(output)
            output.unlink(missing_ok=True)
        runs[command] = subprocess.run(
            ["bash", "-c", command], check=False, cwd=folder, env=env, capture_output=True, text=True, timeout=300
        )
    return folder, runs


def test_the_readme_commands_are_found():
    assert (
        "nccli analyze 'test/*.h5' --means-from train/ --out test.parquet" in COMMANDS
    )  # test collapse over training in one command
    assert sum(command.split()[1] == "analyze" for command in COMMANDS) >= 3
    assert {command.split()[1] for command in COMMANDS} >= {"analyze", "report", "plot"}


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_runs_as_written(readme_runs, command):
    """Exit 0, and each file or folder the command names is written (not empty)."""
    if reason := needs_missing_package(command):
        pytest.skip(reason)
    folder, runs = readme_runs
    run = runs[command]
    assert run.returncode == 0, run.stderr
    for output in named_outputs(command):
        path = folder / output
        assert (path.is_file() and path.stat().st_size) or (path.is_dir() and any(path.iterdir())), output
    if not named_outputs(command):
        assert run.stdout.strip(), "prints nothing"


# --------------------------------------------------------------------------- the random-features column


def random_features_script():
    """docs/random_features.py, which measures the column and formats its cells."""
    spec = importlib.util.spec_from_file_location("random_features", ROOT / "docs" / "random_features.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_random_features_column_is_the_stored_output():
    """Every number of the column is its median (5–95 % band) in docs/random_features.json, formatted by the script
    that wrote it; a cell of a column not stored has no numbers. Regenerate both: python docs/random_features.py"""
    script = random_features_script()
    stored = json.loads(script.OUTPUT.read_text())
    rows = script.table_rows(README)
    assert set(stored["columns"]) <= set(rows), "stored columns missing from the README table"
    for name, (_, cell) in rows.items():
        expected = [script.cell_text(stored, name)] if name in stored["columns"] else []
        assert script.CELL_NUMBERS.findall(cell) == expected, (name, cell)
        assert not re.findall(r"\d+\.\d+|\d{2,}", script.CELL_NUMBERS.sub("", cell)), (
            name,
            "a number not stored",
            cell,
        )
    assert stored["draws"] >= 30 and f"{stored['draws']} seeded draws" in README


def test_the_lazy_exports_are_listed_by_dir():
    assert {"analyze_features", "measure_collapse", "write_analysis", "extract_features"} <= set(dir(nccli))
