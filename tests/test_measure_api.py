"""``measure_collapse``'s keyword arguments: ``epoch`` and ``split`` fill the report's columns, a ``means_from``
file of another epoch is refused, and what it refuses names the keyword argument, not a command-line option."""

import numpy as np
import pytest
from h5files import write_feature_file

from nccli import measure_collapse, schema
from nccli.analyze.memory import DEFAULT_LAYER
from nccli.errors import NcCliError

K = 3


def batches(seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    labels = np.arange(60) % K
    features = rng.normal(size=(60, 4)) + labels[:, None]
    return [(features[i : i + 16], labels[i : i + 16]) for i in range(0, 60, 16)]


def refusal(**kwargs) -> str:
    with pytest.raises(NcCliError) as error:
        measure_collapse(batches(), num_classes=K, device="cpu", **kwargs)
    message = str(error.value)
    assert "\n" not in message and "--" not in message  # a keyword argument, never a command-line option
    return message


def test_epoch_and_split_fill_the_report_columns():
    rows = measure_collapse(batches(), num_classes=K, device="cpu", epoch=np.int64(30), split="test")
    assert [(row[schema.COL_EPOCH], row[schema.COL_SPLIT]) for row in rows] == [(30, "test")]
    assert type(rows[0][schema.COL_EPOCH]) is int and tuple(rows[0]) == schema.SUMMARY_COLUMNS
    (default,) = measure_collapse(batches(), num_classes=K, device="cpu")
    assert (default[schema.COL_EPOCH], default[schema.COL_SPLIT]) == (None, schema.DEFAULT_SPLIT)
    same = {key: value for key, value in default.items() if key not in (schema.COL_EPOCH, schema.COL_SPLIT)}
    assert same == {key: value for key, value in rows[0].items() if key in same}  # the metrics do not change


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"epoch": -1}, "epoch must be an integer ≥ 0 or None, got -1"),
        ({"epoch": 2.0}, "epoch must be an integer ≥ 0 or None, got 2.0"),
        ({"epoch": True}, "epoch must be an integer ≥ 0 or None, got True"),
        ({"epoch": "3"}, "epoch must be an integer ≥ 0 or None, got '3'"),
        ({"split": ""}, "split must be a non-empty string such as 'train' or 'test', got ''"),
        ({"split": None}, "split must be a non-empty string such as 'train' or 'test', got None"),
        ({"top_classes": 0}, "top_classes must be a positive integer or None, got 0"),
        ({"min_count": 1.5}, "min_count must be a positive integer or None, got 1.5"),
    ],
    ids=["negative epoch", "float epoch", "bool epoch", "str epoch", "empty split", "no split", "no top", "float min"],
)
def test_bad_epoch_or_split_is_refused_in_one_line(kwargs, fragment):
    assert refusal(**kwargs) == fragment


def test_top_classes_and_min_count_leave_the_other_classes_rows_out():
    rng = np.random.default_rng(1)
    labels = np.repeat([0, 1, 2, 3], [30, 12, 25, 5])  # most rows: 0, 2, 1, 3
    features = rng.normal(size=(len(labels), 4)) + labels[:, None]
    kept = np.isin(labels, [0, 2])
    (restricted,) = measure_collapse([(features, labels)], num_classes=4, device="cpu", top_classes=3, min_count=13)
    (alone,) = measure_collapse([(features[kept], labels[kept])], num_classes=4, device="cpu")
    assert restricted[schema.COL_N_SAMPLES] == 55 and restricted[schema.COL_N_CLASSES] == 2
    for column, value in alone.items():
        if isinstance(value, float):
            assert restricted[column] == pytest.approx(value, rel=1e-12, nan_ok=True), column
        else:
            assert restricted[column] == value, column


def test_a_means_from_file_of_another_epoch_is_refused(tmp_path):
    features, labels = (np.concatenate(parts) for parts in zip(*batches(1)))
    reference = write_feature_file(tmp_path / "train.h5", labels, {DEFAULT_LAYER: features}, epoch=2)
    message = refusal(means_from=str(reference), epoch=3)
    assert message == (
        f"means_from='{reference}' is from epoch 2 but the rows from epoch 3: the class means of another checkpoint "
        "do not apply; "
        "pass the feature file of epoch 3"
    )
    (row,) = measure_collapse(batches(), num_classes=K, device="cpu", means_from=str(reference), epoch=2)
    assert row[schema.COL_EPOCH] == 2 and 0 <= row["ncc_accuracy"] <= 1


def test_the_default_layer_matches_no_layer_of_a_feature_file(tmp_path):
    features, labels = (np.concatenate(parts) for parts in zip(*batches(), strict=True))
    reference = write_feature_file(tmp_path / "vgg.h5", labels, {"features": features})  # VGG's trunk is 'features'
    message = refusal(means_from=str(reference))
    assert "means_from= file has no layer '(features)'" in message, message


@pytest.mark.parametrize(
    ("device", "fragment"),
    [("gpu", "device='gpu' is not a device"), ("cuda:7", "device='cuda:7'")],
)
def test_a_device_refusal_names_the_keyword(device, fragment):
    import torch

    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has eight CUDA devices")
    with pytest.raises(NcCliError) as error:
        measure_collapse(batches(), num_classes=K, device=device)
    assert fragment in str(error.value) and "--device" not in str(error.value), str(error.value)
