"""``nccli demo``: neural collapse on the bundled digits, offline, in well under two minutes.

The same code paths a user runs: :func:`nccli.extract.extract_features` for
the train and test splits of every bundled checkpoint, :func:`analyze_features`
(each test file with the class means of the train file of its epoch — the
"test collapse" setting — paired by ``--means-from`` over the train files), one Parquet report and the figures of
:mod:`nccli.report.plots`.
"""

import re
import runpy
from dataclasses import dataclass, field
from pathlib import Path

from nccli import schema
from nccli.analyze.analysis import AnalyzeConfig, analyze_features
from nccli.errors import UsageError

SAMPLE_DATA = Path(__file__).resolve().parent.parent / "sample_data"
ARCH_FILE = "digits_mlp.py"
ARCH_CALLABLE = "digits_mlp"
SPLITS = ("train", "test")


@dataclass(frozen=True)
class DemoConfig:
    """``out``: folder for features, report and figures; ``figures``: where the figures go
    (default ``out/figures``); ``checkpoints``: epochs to use (default all bundled);
    ``limit``: first N samples of each split (default all)."""

    out: str
    sample_data: str = str(SAMPLE_DATA)
    figures: str | None = None
    checkpoints: tuple[int, ...] | None = None
    limit: int | None = None
    device: str = "auto"
    show_progress: bool = False


@dataclass
class DemoResult:
    report: Path
    figures: list[Path]
    summary: list[dict] = field(default_factory=list)


def _bundled_checkpoints(folder: Path, epochs: tuple[int, ...] | None) -> dict[int, Path]:
    found = {int(re.search(r"(\d+)", path.stem).group(1)): path for path in sorted(folder.glob("epoch_*.pt"))}
    if not found:
        raise UsageError(f"no checkpoints epoch_*.pt in '{folder}'")
    if epochs is None:
        return found
    missing = sorted(set(epochs) - set(found))
    if missing:
        raise UsageError(f"no bundled checkpoint for epochs {missing}; bundled epochs are {sorted(found)}")
    return {epoch: found[epoch] for epoch in sorted(epochs)}


def run_demo(config: DemoConfig) -> DemoResult:
    """Extract, analyze, report and plot; return the report, figures and summary rows."""
    from nccli.analyze.outputs import write_report
    from nccli.extract import ExtractConfig, ModelOptions, extract_features
    from nccli.report.plots import plot_report

    data = Path(config.sample_data)
    arch = data / ARCH_FILE
    if not arch.is_file():
        raise UsageError(f"sample data not found in '{data}' (it ships with a clone of nccli); pass --sample-data DIR")
    constants = runpy.run_path(str(arch))  # our own bundled file: the normalisation the model was trained with
    checkpoints = _bundled_checkpoints(data / "checkpoints", config.checkpoints)
    out = Path(config.out)
    files: dict[str, list[str]] = {}
    for split in SPLITS:
        results = extract_features(
            ExtractConfig(
                models=tuple(str(path) for path in checkpoints.values()),
                data=str(data / f"digits_{split}.npz"),
                out=str(out / "features" / split) + "/",
                model=ModelOptions(arch=f"{arch}:{ARCH_CALLABLE}"),
                split=split,
                mean=(constants["DIGITS_MEAN"],),
                std=(constants["DIGITS_STD"],),
                limit=config.limit,
                device=config.device,
                workers=0,
                overwrite=True,
                progress=config.show_progress,
                command="nccli demo",
            )
        )
        files[split] = [result.path for result in results]

    analysis = analyze_features(
        AnalyzeConfig(
            files=tuple(files["train"] + files["test"]),
            means_from=str(out / "features" / "train"),  # each test file gets the train file of its epoch
            device=config.device,
            show_progress=config.show_progress,
        )
    )
    report = out / "report.parquet"
    write_report(analysis, report, "nccli demo")
    figures = plot_report(report, config.figures or out / "figures")
    return DemoResult(report, figures, analysis.summary)


def penultimate_rows(summary: list[dict]) -> list[dict]:
    """Rows of the classifier's input layer (the ones with a classifier accuracy), by split then epoch."""
    rows = [
        row for row in summary if row.get("clf_accuracy") is not None and row["clf_accuracy"] == row["clf_accuracy"]
    ]
    return sorted(rows, key=lambda row: (SPLITS.index(row[schema.COL_SPLIT]), row[schema.COL_EPOCH]))
