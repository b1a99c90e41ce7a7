"""Writing analyze's reports (analyze/outputs.py, docs/report.md): the per-pair table streamed, `--pairs-top`,
the refusal of a too-large table, outputs that never overlap inputs, permissions under the umask, and what a
Ctrl-C before or after the reports are in place leaves."""

import contextlib
import hashlib
import json
import os
import stat

import numpy as np
import pyarrow.parquet as pq
import pytest
from analysis_helpers import table_rows
from cli_helpers import assert_user_error, invoke
from h5files import good_file, write_feature_file

from nccli import __version__, schema
from nccli.analyze.analysis import AnalyzeConfig
from nccli.analyze.outputs import write_analysis
from nccli.errors import DegenerateMetricWarning, NcCliError
from nccli.io.publish import Staged
from nccli.metrics import tiles
from nccli.report import tables


def many_classes_file(path, k=23, seed=3):
    """K = 23 named classes in two layers; classes 4 and 9 share their rows (a coincident pair, cdnv null)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(6 * k) % k
    features = rng.normal(size=(k, 4))[labels] + 0.5 * rng.normal(size=(6 * k, 4))
    features[labels == 9] = features[labels == 4]
    return write_feature_file(
        path,
        labels,
        {"early": np.tanh(features), "fc_in": features},
        weight=rng.normal(size=(k, 4)),
        bias=rng.normal(size=k),
        classifier_layer="fc_in",
        class_names=[f"c{i}" for i in range(k)],
    )


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def rank_key(row):
    cdnv = row["cdnv"]
    return (-(np.inf if cdnv is None else cdnv), row[schema.COL_CLASS], row[schema.COL_CLASS_B])


def test_a_forced_small_tile_budget_gives_the_same_report_and_streams_row_groups(tmp_path, monkeypatch):
    path = many_classes_file(tmp_path / "f.h5")
    names = {}
    for label, budget in (("whole", None), ("small", 8 * 16 * 4**2)):  # tiles of 4 classes
        if budget:
            monkeypatch.setattr(tiles, "TILE_BYTES", budget)
        outputs = [tmp_path / f"{label}-{name}.parquet" for name in ("r", "c", "p")]
        assert (
            invoke("analyze", path, "--out", outputs[0], "--classes", outputs[1], "--pairs", outputs[2]).exit_code == 0
        )
        names[label] = outputs
    for whole, small in zip(names["whole"], names["small"]):
        a, b = pq.read_table(whole), pq.read_table(small)
        assert a.schema.equals(b.schema, check_metadata=False) and a.num_rows == b.num_rows
        key = [schema.COL_FILE, schema.COL_LAYER] + [
            c for c in (schema.COL_CLASS, schema.COL_CLASS_B) if c in a.column_names
        ]
        rows_a = sorted(table_rows(a), key=lambda r: [r[c] for c in key])
        rows_b = sorted(table_rows(b), key=lambda r: [r[c] for c in key])
        for row_a, row_b in zip(rows_a, rows_b):
            for column, value in row_a.items():
                if isinstance(value, float):
                    assert row_b[column] == pytest.approx(value, rel=1e-12, abs=1e-15, nan_ok=True), column
                else:
                    assert row_b[column] == value, column
    assert pq.ParquetFile(names["small"][2]).num_row_groups > 2 * 2  # one per tile: never gathered
    footer = pq.read_table(names["small"][2]).schema.metadata  # written last, when the warnings are known
    assert footer[schema.META_VERSION.encode()].decode() == __version__
    assert any("pairs 4–9" in w for w in json.loads(footer[schema.META_WARNINGS.encode()]))


@pytest.mark.parametrize("top", [1, 5, 40, 1000])
def test_pairs_top_equals_the_top_of_the_full_table(tmp_path, monkeypatch, top):
    monkeypatch.setattr(tiles, "TILE_BYTES", 8 * 16 * 5**2)  # selection across tiles of 5
    path = many_classes_file(tmp_path / "f.h5")
    full, best = tmp_path / "full.parquet", tmp_path / "top.parquet"
    assert invoke("analyze", path, "--out", tmp_path / "r.parquet", "--pairs", full).exit_code == 0
    assert invoke("analyze", path, "--out", tmp_path / "r.parquet", "--pairs", best, "--pairs-top", top).exit_code == 0
    rows = pq.read_table(full).to_pylist()
    kept = pq.read_table(best).to_pylist()
    for layer in ("early", "fc_in"):
        expected = sorted((r for r in rows if r[schema.COL_LAYER] == layer), key=rank_key)[:top]
        assert [r for r in kept if r[schema.COL_LAYER] == layer] == expected
    assert kept[0]["cdnv"] is None and (kept[0][schema.COL_CLASS], kept[0][schema.COL_CLASS_B]) == (4, 9)


def test_a_too_large_pair_table_is_refused_before_reading_with_the_flag_to_use(tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "PAIRS_ROWS_MAX", 400)  # 2 layers × 253 pairs
    path = many_classes_file(tmp_path / "f.h5")
    before = sorted(os.listdir(tmp_path))
    result = invoke("analyze", path, "--out", tmp_path / "r.parquet", "--pairs", tmp_path / "p.parquet")
    assert_user_error(result, "--pairs would write up to 506 rows", "above the limit of 400", "--pairs-top N")
    assert sorted(os.listdir(tmp_path)) == before
    assert (
        invoke(
            "analyze", path, "--out", tmp_path / "r.parquet", "--pairs", tmp_path / "p.parquet", "--pairs-top", 3
        ).exit_code
        == 0
    )
    assert pq.read_table(tmp_path / "p.parquet").num_rows == 6


def test_pairs_top_without_pairs_and_below_one_are_refused(tmp_path):
    path = many_classes_file(tmp_path / "f.h5")
    assert_user_error(
        invoke("analyze", path, "--out", tmp_path / "r.parquet", "--pairs-top", 3), "--pairs-top", "--pairs FILE"
    )
    assert_user_error(
        invoke("analyze", path, "--out", tmp_path / "r.parquet", "--pairs", tmp_path / "p.parquet", "--pairs-top", 0),
        "≥ 1",
    )
    assert not (tmp_path / "r.parquet").exists()


def overlapping(tmp_path):
    """(arguments, fragment of the message) for every way an output can name an input or another output."""
    data, reference = good_file(tmp_path / "in.h5"), good_file(tmp_path / "train.h5", seed=1)
    (tmp_path / "link.parquet").symlink_to(data)
    os.link(data, tmp_path / "hard.parquet")
    common = [data, "--means-from", reference]
    (tmp_path / "refs").mkdir()
    in_folder = good_file(tmp_path / "refs" / "in.h5", seed=2)
    return [data, reference, in_folder], [
        ([data, "--means-from", tmp_path / "refs", "--out", in_folder], "is the input file"),  # --means-from a folder
        (common + ["--out", data], "--out"),
        (common + ["--out", tmp_path / "r.parquet", "--classes", data], "--classes"),
        (common + ["--out", tmp_path / "r.parquet", "--pairs", tmp_path / "sub" / ".." / "in.h5"], "--pairs"),
        (common + ["--out", reference], "is the input file"),
        (common + ["--out", tmp_path / "link.parquet"], "is the input file"),
        (common + ["--out", tmp_path / "hard.parquet"], "is the input file"),
        (
            common + ["--out", tmp_path / "r.parquet", "--classes", tmp_path / "r.parquet"],
            "--out and --classes both name",
        ),
        (
            common + ["--out", tmp_path / "r.parquet", "--pairs", tmp_path / "./r.parquet"],
            "--out and --pairs both name",
        ),
    ]


def test_outputs_never_overlap_inputs_or_each_other(tmp_path):
    (tmp_path / "sub").mkdir()
    inputs, cases = overlapping(tmp_path)
    digests = {path: digest(path) for path in inputs}
    before = sorted(os.listdir(tmp_path))
    for arguments, fragment in cases:
        assert_user_error(invoke("analyze", *arguments), fragment)
        assert sorted(os.listdir(tmp_path)) == before, arguments
    assert {path: digest(path) for path in inputs} == digests


def test_a_python_caller_gets_the_same_checks(tmp_path):
    data = good_file(tmp_path / "in.h5")
    with pytest.raises(NcCliError, match="is the input file"):
        write_analysis(AnalyzeConfig(files=(str(data),), device="cpu"), out=data)
    result = write_analysis(
        AnalyzeConfig(files=(str(data),), device="cpu"), out=tmp_path / "r.parquet", classes=tmp_path / "c.parquet"
    )
    assert pq.read_table(tmp_path / "r.parquet").num_rows == len(result.summary) == 2
    assert pq.read_table(tmp_path / "c.parquet").num_rows == 8


@contextlib.contextmanager
def umask(mask):
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def test_reports_get_the_permissions_of_a_new_file_under_the_umask(tmp_path):
    data = good_file(tmp_path / "in.h5")
    outputs = [tmp_path / f"{name}.parquet" for name in ("r", "c", "p")]
    arguments = ["analyze", data, "--out", outputs[0], "--classes", outputs[1], "--pairs", outputs[2]]
    with umask(0o022):
        assert invoke(*arguments).exit_code == 0
        assert [stat.S_IMODE(os.stat(p).st_mode) for p in outputs] == [0o644] * 3
        for path in outputs:
            os.chmod(path, 0o644)
        assert invoke(*arguments).exit_code == 0  # replacing 0644 reports
        assert [stat.S_IMODE(os.stat(p).st_mode) for p in outputs] == [0o644] * 3
    with umask(0o077):
        assert invoke(*arguments).exit_code == 0
        assert [stat.S_IMODE(os.stat(p).st_mode) for p in outputs] == [0o600] * 3


def interrupt_after(monkeypatch, step: str) -> None:
    """Ctrl-C once ``Staged.<step>`` is done: ``flush`` (the reports complete, not in place) or ``commit``."""
    done = getattr(Staged, step)

    def interrupted(self):
        done(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(Staged, step, interrupted)


def test_a_ctrl_c_before_the_reports_are_in_place_leaves_the_earlier_ones(tmp_path, monkeypatch):
    data = good_file(tmp_path / "in.h5")
    outputs = [tmp_path / f"{name}.parquet" for name in ("r", "c")]
    for path in outputs:
        path.write_text("earlier")
    interrupt_after(monkeypatch, "flush")
    result = invoke("analyze", data, "--out", outputs[0], "--classes", outputs[1])
    assert result.exit_code == 130 and result.stderr.strip() == "interrupted" and result.stdout == ""
    assert [path.read_text() for path in outputs] == ["earlier", "earlier"]
    assert sorted(os.listdir(tmp_path)) == ["c.parquet", "in.h5", "r.parquet"]


def test_a_ctrl_c_once_the_reports_are_in_place_only_warns(tmp_path, monkeypatch):
    data = good_file(tmp_path / "in.h5")
    out, classes = tmp_path / "r.parquet", tmp_path / "c.parquet"
    interrupt_after(monkeypatch, "commit")
    result = invoke("analyze", data, "--out", out, "--classes", classes)
    assert result.exit_code == 0 and result.stdout.strip() == str(out)
    assert result.stderr.strip() == "warning: interrupted after the reports were published; they are complete"
    assert pq.read_table(out).num_rows == 2 and pq.read_table(classes).num_rows == 8
    with pytest.warns(DegenerateMetricWarning, match="after the reports were published"):
        returned = write_analysis(AnalyzeConfig(files=(str(data),), device="cpu"), out=out)
    assert len(returned.summary) == 2
