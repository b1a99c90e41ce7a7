"""``--means-from`` over many checkpoints: a folder or glob of references paired with each file by epoch (else file
name); what cannot be paired, a single reference for other epochs, and a reference of another model are refused."""

import json
import math

import pyarrow.parquet as pq
import pytest
from cli_helpers import assert_user_error, invoke, snapshot
from h5files import good_file

from nccli.analyze.analysis import AnalyzeConfig, analyze_features

EPOCHS = (1, 5, 30)


def checkpoints(folder, model="mlp"):
    """train/epoch_E.h5 and test/epoch_E.h5 for each epoch, with different data per epoch."""
    for split, offset in (("train", 0), ("test", 100)):
        (folder / split).mkdir()
        for epoch in EPOCHS:
            good_file(folder / split / f"epoch_{epoch}.h5", seed=epoch + offset, epoch=epoch, split=split, model=model)
    return folder


def summary(files, means_from):
    rows = analyze_features(AnalyzeConfig(files=tuple(map(str, files)), means_from=means_from, device="cpu")).summary
    return [(row["file"], row["layer"], row["ncc_accuracy"], null(row["nc4_ncc_mismatch"])) for row in rows]


def null(value):
    """NaN in the library's rows is null in the report."""
    return None if math.isnan(value) else value


@pytest.mark.parametrize("form", ["folder", "glob"])
def test_each_file_gets_the_reference_of_its_epoch(tmp_path, form):
    checkpoints(tmp_path)
    tests = [tmp_path / "test" / f"epoch_{epoch}.h5" for epoch in EPOCHS]
    spec = str(tmp_path / "train") if form == "folder" else str(tmp_path / "train" / "epoch_*.h5")
    out = tmp_path / "r.parquet"
    before = snapshot(tmp_path / "train")
    result = invoke("analyze", *tests, "--means-from", spec, "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    one_by_one = [
        row
        for epoch, test in zip(EPOCHS, tests)
        for row in summary([test], str(tmp_path / "train" / f"epoch_{epoch}.h5"))
    ]
    table = pq.read_table(out)
    assert [(r["file"], r["layer"], r["ncc_accuracy"], r["nc4_ncc_mismatch"]) for r in table.to_pylist()] == one_by_one
    conventions = json.loads(table.schema.metadata[b"conventions"])
    assert conventions["ncc_means_from"] == {str(test): str(tmp_path / "train" / test.name) for test in tests}
    assert snapshot(tmp_path / "train") == before


def test_a_file_paired_with_itself_uses_its_own_means_and_each_reference_is_read_once(tmp_path, monkeypatch):
    from nccli.analyze.passes import Scanner

    checkpoints(tmp_path)
    passes = []
    original = Scanner.moments
    monkeypatch.setattr(Scanner, "moments", lambda self, f, *a: passes.append(f.info.path) or original(self, f, *a))
    train, test = tmp_path / "train" / "epoch_5.h5", tmp_path / "test" / "epoch_5.h5"
    other = good_file(tmp_path / "other.h5", seed=7, epoch=5, model="mlp")
    paired = summary([train, test, other], str(train))
    assert passes == [str(train), str(train), str(test), str(other)]  # train: as the reference, then as a file
    assert paired[:2] == summary([train], None)


def test_files_without_epochs_pair_by_file_name(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        for name, seed in (("a.h5", 1), ("b.h5", 2)):
            good_file(tmp_path / split / name, seed=seed + (split == "test") * 10)
    tests = [tmp_path / "test" / "b.h5", tmp_path / "test" / "a.h5"]
    assert summary(tests, str(tmp_path / "train")) == summary(tests[:1], str(tmp_path / "train" / "b.h5")) + summary(
        tests[1:], str(tmp_path / "train" / "a.h5")
    )


def refused(tmp_path, *args):
    out = tmp_path / "r.parquet"
    out.write_bytes(b"earlier report")
    before = snapshot(tmp_path)
    result = invoke("analyze", *args, "--out", out, "--device", "cpu")
    assert snapshot(tmp_path) == before
    return result


def test_a_single_reference_is_not_applied_to_other_epochs(tmp_path):
    checkpoints(tmp_path)
    last = tmp_path / "train" / "epoch_30.h5"
    result = refused(
        tmp_path, tmp_path / "test" / "epoch_30.h5", tmp_path / "test" / "epoch_1.h5", "--means-from", last
    )
    assert_user_error(
        result,
        str(last),
        "epoch 30",
        "'" + str(tmp_path / "test" / "epoch_1.h5") + "' is from epoch 1",
        f"--means-from {tmp_path / 'train'}/",
    )
    assert (
        invoke(
            "analyze", tmp_path / "test" / "epoch_30.h5", "--means-from", last, "--out", tmp_path / "ok.parquet"
        ).exit_code
        == 0
    )


def test_a_single_reference_without_an_epoch_is_not_applied_to_several_epochs(tmp_path):
    checkpoints(tmp_path)
    reference = good_file(tmp_path / "reference.h5", model="mlp")
    tests = [tmp_path / "test" / "epoch_1.h5", tmp_path / "test" / "epoch_5.h5"]
    assert_user_error(
        refused(tmp_path, *tests, "--means-from", reference), str(reference), "no epoch", "epochs 1, 5", "--means-from"
    )
    assert invoke("analyze", tests[0], "--means-from", reference, "--out", tmp_path / "ok.parquet").exit_code == 0


def test_a_file_without_a_reference_of_its_epoch_is_refused(tmp_path):
    checkpoints(tmp_path)
    lone = good_file(tmp_path / "epoch_7.h5", epoch=7, model="mlp")
    assert_user_error(
        refused(tmp_path, lone, "--means-from", tmp_path / "train"), "no reference of epoch 7", str(lone), "1, 5, 30"
    )


def test_unpairable_names_and_empty_sets_are_refused(tmp_path):
    (tmp_path / "refs").mkdir()
    good_file(tmp_path / "refs" / "x.h5")
    good_file(tmp_path / "refs" / "y.h5")
    analysed = good_file(tmp_path / "z.h5")
    assert_user_error(
        refused(tmp_path, analysed, "--means-from", tmp_path / "refs"),
        "no single reference",
        str(analysed),
        "0 named 'z.h5'",
    )
    (tmp_path / "empty").mkdir()
    assert_user_error(refused(tmp_path, analysed, "--means-from", tmp_path / "empty"), "holds no *.h5")
    assert_user_error(refused(tmp_path, analysed, "--means-from", tmp_path / "nothing*.h5"), "matches no file")


def test_a_reference_of_another_model_is_refused(tmp_path):
    reference = good_file(tmp_path / "train.h5", model="resnet18")
    analysed = good_file(tmp_path / "test.h5", seed=3, model="vgg11")
    assert_user_error(refused(tmp_path, analysed, "--means-from", reference), str(reference), "'resnet18'", "'vgg11'")


def test_a_reference_whose_class_names_are_in_another_order_is_refused(tmp_path):
    """Same K, names permuted: the NCC rule would compare every row with another class's mean."""
    names = ["cat", "dog", "eel", "fox"]
    train = good_file(tmp_path / "train.h5", class_names=names)
    test = good_file(tmp_path / "test.h5", seed=3, split="test", class_names=[names[1], names[0], *names[2:]])
    out = tmp_path / "r.parquet"
    result = invoke("analyze", test, "--means-from", train, "--out", out)
    assert_user_error(result, "train.h5", "names class 0 'cat'", "'dog'", "2 of 4 names differ")
    assert not out.exists()
    same = good_file(tmp_path / "same.h5", seed=4, split="test", class_names=names)
    assert invoke("analyze", same, "--means-from", train, "--out", out).exit_code == 0
