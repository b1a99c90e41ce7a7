"""What `nccli extract` writes, `nccli analyze` reads: one report row per layer, classifier metrics included."""

import pytest
import torch
from cli_helpers import invoke
from extract_helpers import IMAGENET, random_images, tiny_cnn, write_npz

from nccli import schema

pq = pytest.importorskip("pyarrow.parquet")


def test_extracted_file_passes_analyze(tmp_path):
    torch.save({"state_dict": tiny_cnn(num_classes=4).state_dict(), "epoch": 5}, tmp_path / "model.pt")
    images, labels = random_images(n=40, size=16, classes=4)
    data = write_npz(tmp_path / "data.npz", images, labels)
    features = tmp_path / "features.h5"
    result = invoke(
        "extract",
        tmp_path / "model.pt",
        data,
        "--arch",
        "extract_helpers:tiny_cnn",
        *IMAGENET,
        "--num-classes",
        4,
        "--out",
        features,
        "--workers",
        0,
        "--dtype",
        "float16",
        "--compression",
        "lzf",
    )
    assert result.exit_code == 0, result.stderr

    result = invoke("analyze", features, "--out", tmp_path / "r.parquet")
    assert result.exit_code == 0, (result.stdout, result.stderr)
    summary = pq.read_table(tmp_path / "r.parquet").to_pylist()
    by_layer = {row[schema.COL_LAYER]: row for row in summary}
    assert set(by_layer) == {"conv1", "bn1", "relu#1", "relu#2", "block", "fc:input", "fc"}
    assert [row[schema.COL_LAYER] for row in sorted(summary, key=lambda row: row[schema.COL_LAYER_ORDER])][
        -1
    ] == "fc"  # the logits, after the classifier's input
    penultimate = by_layer["fc:input"]
    assert penultimate[schema.COL_EPOCH] == 5 and penultimate[schema.COL_N_SAMPLES] == 40
    assert penultimate[schema.COL_N_CLASSES] == 4 and penultimate[schema.COL_DIM] == 16
    assert penultimate["clf_accuracy"] is not None
