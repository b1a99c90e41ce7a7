"""The "random features" column of the README's "How to read the numbers" table, regenerated.

The README's setting: Gaussian features h ~ N(0, I_d) with labels drawn uniformly at random over K classes
(class sizes vary), N = 5 000 samples, d = 64, K = 10. The classifier's rows are w_c ~ N(0, I_d / d), with
no bias (b = 0). ``nc5_ood_orthogonality`` takes as the --ood file 5 000 more Gaussian rows N(0, I_d); the
opt-in ``snr_min``/``snr_max`` are computed (--snr); the MSE columns are not (the README gives none).

Each draw writes its feature files to a temporary folder with nccli's own writer (``convert_features``, as
``nccli convert``) and measures them with ``analyze_features`` (the code of ``nccli analyze``), so the
numbers follow the metric definitions of the nccli that runs this script. ``DRAWS`` draws with seeds 0, 1,
... give per column the median and the 5–95 % band (numpy's linear percentiles), stored in
``docs/random_features.json``; the README cells show them as ``median (p5–p95)`` (:func:`format_cell`), and
this script rewrites those numbers in the README in place (the words around them stay). tests/test_docs.py
checks that the README and the stored output agree.

    python docs/random_features.py    # about a minute on two CPU cores
"""

import argparse
import json
import math
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "random_features.json"
README = ROOT / "README.md"
SECTION = "## How to read the numbers"

N_SAMPLES, DIM, NUM_CLASSES, OOD_SAMPLES = 5_000, 64, 10, 5_000
DRAWS = 200
BAND = (5, 95)  # percentiles

_NUMBER = r"−?\d+(?:\.\d+)?"
CELL_NUMBERS = re.compile(rf"{_NUMBER} \({_NUMBER}(?:–| to ){_NUMBER}\)")
"""How a README cell shows a column's numbers: ``median (p5–p95)``, or ``median (p5 to p95)`` when p5 < 0."""


def measured_columns() -> tuple[str, ...]:
    """Every summary metric this setting gives: all but the MSE decomposition."""
    from nccli import schema

    return tuple(name for name in schema.METRIC_COLUMNS if name not in schema.MSE_METRICS)


def draw(seed: int, folder: Path) -> dict[str, float]:
    """One draw of the setting, measured by nccli: column → value."""
    from nccli import AnalyzeConfig, ConvertConfig, analyze_features, convert_features

    rng = np.random.default_rng(seed)
    arrays = {
        "features": rng.standard_normal((N_SAMPLES, DIM)).astype(np.float32),
        "labels": rng.integers(0, NUM_CLASSES, N_SAMPLES),
        "weight": (rng.standard_normal((NUM_CLASSES, DIM)) / math.sqrt(DIM)).astype(np.float32),
        "bias": np.zeros(NUM_CLASSES, dtype=np.float32),
    }
    ood = {
        "features": rng.standard_normal((OOD_SAMPLES, DIM)).astype(np.float32),
        "labels": rng.integers(0, NUM_CLASSES, OOD_SAMPLES),
    }
    paths = {}
    for name, content in (("random", arrays), ("ood", ood)):
        np.savez(folder / f"{name}.npz", **content)
        paths[name] = str(folder / f"{name}.h5")
        convert_features(
            ConvertConfig(
                sources=(str(folder / f"{name}.npz"),), out=paths[name], num_classes=NUM_CLASSES, overwrite=True
            )
        )
    config = AnalyzeConfig(files=(paths["random"],), snr=True, ood=paths["ood"], device="cpu")
    (row,) = analyze_features(config).summary
    return {name: float(row[name]) for name in measured_columns()}


def measure(draws: int) -> dict:
    """Median and band per column over ``draws`` seeds, with the setting, as stored in ``OUTPUT``."""
    import nccli
    from nccli.errors import DegenerateMetricWarning

    values: dict[str, list[float]] = {name: [] for name in measured_columns()}
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateMetricWarning)  # random class sizes differ; nulls are refused below
        for seed in range(draws):
            for name, value in draw(seed, Path(folder)).items():
                values[name].append(value)
    columns = {}
    for name, found in values.items():
        if not all(math.isfinite(value) for value in found):
            raise SystemExit(
                f"{name}: {sum(not math.isfinite(v) for v in found)} of {draws} draws are null or infinite"
            )
        low, median, high = np.percentile(found, [BAND[0], 50, BAND[1]])
        columns[name] = {"median": _digits(median), f"p{BAND[0]}": _digits(low), f"p{BAND[1]}": _digits(high)}
    setting = (
        f"Gaussian features N(0, I_d), labels uniform at random: N = {N_SAMPLES}, d = {DIM}, K = {NUM_CLASSES}; "
        f"classifier rows N(0, I_d/d), no bias; --ood: {OOD_SAMPLES} more Gaussian rows; --snr"
    )
    return {
        "setting": setting,
        "draws": draws,
        "seeds": f"0 to {draws - 1} (numpy default_rng)",
        "band": f"{BAND[0]}th to {BAND[1]}th percentile",
        "nccli_version": nccli.__version__,
        "columns": columns,
    }


def _digits(value: float) -> float:
    """Six significant digits: what the README can show, and a stored file that does not churn."""
    return float(f"{value:.6g}")


def format_cell(median: float, low: float, high: float) -> str:
    """``median (low–high)``, rounded alike: two significant digits of the largest, more until the median
    differs as printed from each end that differs in value (at most three more); ``−`` for minus, ``to``
    between the ends when low < 0."""
    largest = max(abs(median), abs(low), abs(high))
    decimals = 1 - math.floor(math.log10(largest)) if largest > 0 else 0
    for extra in range(4):
        shown = [_fixed(value, decimals + extra) for value in (median, low, high)]
        if all(text != shown[0] or value == median for text, value in zip(shown[1:], (low, high))):
            break
    separator = " to " if shown[1].startswith("−") else "–"
    return f"{shown[0]} ({shown[1]}{separator}{shown[2]})"


def _fixed(value: float, decimals: int) -> str:
    rounded = round(value, decimals)
    text = f"{rounded:.{max(decimals, 0)}f}"
    return "0" if float(text) == 0 else text.replace("-", "−")


def cell_text(stored: dict, name: str) -> str:
    """The README cell numbers of column ``name`` from the stored output."""
    column = stored["columns"][name]
    return format_cell(column["median"], column[f"p{BAND[0]}"], column[f"p{BAND[1]}"])


def table_rows(readme: str) -> dict[str, tuple[int, str]]:
    """Per column of the "How to read the numbers" table: its line number and its random-features cell."""
    lines = readme.splitlines()
    start = lines.index(SECTION)
    rows = {}
    for number, line in enumerate(lines[start + 1 :], start + 1):
        if line.startswith("## "):
            break
        found = re.match(r"\| `(\w+)` \|", line)
        if found:
            rows[found.group(1)] = number, line.rsplit(" | ", 1)[1].removesuffix(" |")
    return rows


def update_readme(stored: dict) -> list[str]:
    """Rewrite the numbers of every random-features cell in README.md; the columns whose cell has none."""
    text = README.read_text()
    lines = text.splitlines(keepends=True)
    missing = []
    for name, (number, cell) in table_rows(text).items():
        if name not in stored["columns"]:
            continue
        if not CELL_NUMBERS.search(cell):
            missing.append(name)
            continue
        new = CELL_NUMBERS.sub(cell_text(stored, name), cell, count=1)
        prefix = lines[number].rsplit(" | ", 1)[0]
        lines[number] = f"{prefix} | {new} |\n"
    README.write_text("".join(lines))
    return missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, default=DRAWS, help=f"seeds 0 .. DRAWS−1 (default {DRAWS})")
    parser.add_argument("--no-readme", action="store_true", help="write the stored output only, not README.md")
    options = parser.parse_args()
    started = time.monotonic()
    stored = measure(options.draws)
    OUTPUT.write_text(json.dumps(stored, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUTPUT.relative_to(ROOT)}: {options.draws} draws in {time.monotonic() - started:.0f} s")
    if not options.no_readme:
        missing = update_readme(stored)
        print(f"updated the random-features numbers in {README.relative_to(ROOT)}")
        if missing:
            print(f"no 'median (p5–p95)' to update in the README cells of: {', '.join(missing)}", file=sys.stderr)
            raise SystemExit(1)


if __name__ == "__main__":
    main()
