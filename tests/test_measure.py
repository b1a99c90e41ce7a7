"""`measure_collapse`: batches in memory give the numbers `analyze` gives for the same rows in a file."""

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from h5files import write_feature_file

from nccli import measure_collapse, schema
from nccli.analyze.analysis import AnalyzeConfig, analyze_features
from nccli.analyze.memory import DEFAULT_LAYER
from nccli.errors import DegenerateMetricWarning, NcCliError
from nccli.metrics.backend import TorchBackend

N, K = 45, 4
README = (Path(__file__).resolve().parent.parent / "README.md").read_text()

# The README's evaluation-loop example, run as it is printed there (keep the two identical).
README_EXAMPLE = """\
import torch
from torch import nn
from nccli import measure_collapse

torch.manual_seed(0)  # stand-ins for your model and evaluation data
data = torch.utils.data.TensorDataset(torch.randn(600, 20), torch.arange(600) % 3)
loader = torch.utils.data.DataLoader(data, batch_size=128)
body = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
head = nn.Linear(32, 3)

def evaluation():  # a new pass over the data per call: measure_collapse makes two
    with torch.no_grad():
        for x, y in loader:
            hidden = body[:2](x)
            yield {"hidden": hidden, "penultimate": body[2:](hidden)}, y

rows = measure_collapse(evaluation, num_classes=3, classifier=(head.weight, head.bias))
for row in rows:  # one dict per layer, the report's columns; pandas.DataFrame(rows) makes a table
    print(row["layer"], round(row["nc1"], 2), round(row["ncc_accuracy"], 3))
"""


def data(seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(N) % K)
    fc_in = rng.normal(size=(N, 5)) + labels[:, None]
    return {
        "labels": labels,
        "block": np.tanh(fc_in @ rng.normal(size=(5, 7))).astype(np.float32),
        "fc_in": fc_in,
        "W": rng.normal(size=(K, 5)),
        "b": rng.normal(size=K),
    }


def analyzed(folder, layers: dict, labels, classifier=None, **config) -> list[dict]:
    """analyze of the same rows written with plain h5py."""
    weight, bias, layer = classifier or (None, None, None)
    path = write_feature_file(
        Path(folder) / "same.h5", labels, layers, weight=weight, bias=bias, classifier_layer=layer
    )
    return analyze_features(AnalyzeConfig(files=(str(path),), device="cpu", **config)).summary


def assert_equal_rows(actual: list[dict], expected: list[dict]):
    assert [row[schema.COL_LAYER] for row in actual] == [row[schema.COL_LAYER] for row in expected]
    for got, want in zip(actual, expected):
        assert tuple(got) == schema.SUMMARY_COLUMNS
        for key in schema.SUMMARY_COLUMNS:
            value = want[key]
            if key == schema.COL_FILE:
                continue
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(got[key]), key
            elif isinstance(value, float):
                assert got[key] == pytest.approx(value, rel=1e-10, abs=1e-12), key
            else:
                assert got[key] == value, key


def batched(arrays: dict, size: int, convert=torch.from_numpy):
    """(features dict, labels) batches of ``size`` rows, each array converted by ``convert``."""
    return [
        (
            {name: convert(arrays[name][i : i + size]) for name in ("block", "fc_in")},
            convert(arrays["labels"][i : i + size]),
        )
        for i in range(0, N, size)
    ]


def test_dict_of_tensor_layers_with_a_classifier_equals_analyze(tmp_path):
    d = data()
    expected = analyzed(tmp_path, {"block": d["block"], "fc_in": d["fc_in"]}, d["labels"], (d["W"], d["b"], "fc_in"))
    weight, bias = torch.from_numpy(d["W"]).requires_grad_(), torch.from_numpy(d["b"])
    rows = measure_collapse(batched(d, 8), num_classes=K, classifier=(weight, bias))
    assert_equal_rows(rows, expected)
    assert not math.isnan(rows[1]["clf_accuracy"])  # the classifier went to the only layer of width 5


def test_arrays_from_a_callable_equal_analyze(tmp_path):
    d = data(1)
    expected = analyzed(tmp_path, {DEFAULT_LAYER: d["fc_in"]}, d["labels"])
    calls = []

    def batches():
        calls.append(None)
        for i in range(0, N, 10):
            yield d["fc_in"][i : i + 10], d["labels"][i : i + 10]

    assert_equal_rows(measure_collapse(batches, num_classes=np.int64(K), device="cpu"), expected)
    assert len(calls) == 2  # two passes; the first batch, read to learn the layers, is not read again


def test_a_shuffling_dataloader_and_means_from_equal_analyze(tmp_path):
    train, test = data(2), data(3)
    reference = write_feature_file(tmp_path / "train.h5", train["labels"], {DEFAULT_LAYER: train["fc_in"]})
    expected = analyzed(tmp_path, {DEFAULT_LAYER: test["fc_in"]}, test["labels"], means_from=str(reference))
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(test["fc_in"]), torch.from_numpy(test["labels"]))
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, shuffle=True)  # each pass in another order
    rows = measure_collapse(loader, num_classes=K, means_from=str(reference))
    assert_equal_rows(rows, expected)


def test_the_torch_backend_takes_the_tensors_as_they_are(tmp_path, monkeypatch):
    """What runs on CUDA tensors (the torch backend on their device), here on the CPU."""
    monkeypatch.setattr("nccli.analyze.memory.select_backend", lambda device: TorchBackend("cpu"))
    d = data(4)
    expected = analyzed(tmp_path, {"block": d["block"], "fc_in": d["fc_in"]}, d["labels"], (d["W"], None, "fc_in"))
    rows = measure_collapse(
        batched(d, 11), num_classes=K, classifier=(torch.from_numpy(d["W"]), None), classifier_layer="fc_in"
    )
    assert_equal_rows(rows, expected)


def one_line_error(call) -> str:
    with pytest.raises(NcCliError) as error:
        call()
    assert "\n" not in str(error.value)
    return str(error.value)


def test_a_generator_is_refused_before_reading_it():
    d = data()
    generator = (batch for batch in batched(d, 8))
    assert "one-shot iterator" in one_line_error(lambda: measure_collapse(generator, num_classes=K))
    assert next(generator)  # not consumed


def with_batch(index: int, change) -> list:
    batches = batched(data(), 8)
    batches[index] = change(*batches[index])
    return batches


BAD_BATCHES = {
    "label out of range": (lambda f, y: (f, y + 1), "batch 2: labels: label 4 outside [0, 4)"),
    "float labels": (lambda f, y: (f, y.double()), "labels must be a 1-D integer array"),
    "NaN": (
        lambda f, y: ({**f, "fc_in": f["fc_in"].clone().fill_(math.nan)}, y),
        "batch 2: layer 'fc_in': non-finite feature value (NaN or Inf) in row 16",
    ),
    "rows": (lambda f, y: (f, y[:-1]), "has 8 rows but the labels (batch 2) have 7"),
    "3-D features": (lambda f, y: ({**f, "block": f["block"][:, :, None]}, y), "features must be 2-D (N, d)"),
    "width": (lambda f, y: ({**f, "block": f["block"][:, :3]}, y), "has width 3 but the first batch's has 7"),
    "layers": (lambda f, y: ({"block": f["block"]}, y), "differ from the first batch's"),
    "not a pair": (lambda f, y: f, "expected a pair (features, labels)"),
}


@pytest.mark.parametrize("case", BAD_BATCHES, ids=list(BAD_BATCHES))
def test_every_batch_is_checked_in_one_line(case):
    change, fragment = BAD_BATCHES[case]
    assert fragment in one_line_error(lambda: measure_collapse(with_batch(2, change), num_classes=K))


def test_a_second_pass_over_other_rows_is_refused():
    d, passes = data(), []

    def batches():
        passes.append(None)
        rows = N if len(passes) == 1 else N - 8  # e.g. a loader that drops a shuffled last batch
        return iter([(torch.from_numpy(d["fc_in"][:rows]), torch.from_numpy(d["labels"][:rows]))])

    assert "other rows on a second pass" in one_line_error(lambda: measure_collapse(batches, num_classes=K))


def test_classifier_and_options_are_checked_in_one_line():
    d = data()
    batches = batched(d, 8)
    wide = (np.zeros((K, 7)), np.zeros(K))
    assert "name the layer with classifier_layer=" in one_line_error(
        lambda: measure_collapse(batches, num_classes=K, classifier=(np.zeros((K, 3)), None))
    )
    assert "has 4 rows but num_classes is 5" in one_line_error(
        lambda: measure_collapse(batches, num_classes=5, classifier=wide)
    )
    assert "num_classes must be a positive integer" in one_line_error(lambda: measure_collapse(batches, num_classes=0))
    assert "batches gave no batch" in one_line_error(lambda: measure_collapse([], num_classes=K))


def test_the_readme_example_runs(capsys):
    exec(compile(README_EXAMPLE, "README example", "exec"), {})  # noqa: S102 (the README's own code)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["hidden", "penultimate"]


@pytest.mark.skipif("measure_collapse" not in README, reason="the README does not show measure_collapse yet")
def test_the_readme_shows_the_example_that_runs():
    blocks = re.findall(r"```python\n(.*?)```", README, re.DOTALL)
    assert README_EXAMPLE in blocks


def test_a_means_from_file_without_the_layer_is_refused_in_one_line(tmp_path):
    d = data()
    reference = write_feature_file(tmp_path / "train.h5", d["labels"], {"other": d["fc_in"]})
    message = one_line_error(lambda: measure_collapse(batched(d, 8), num_classes=K, means_from=str(reference)))
    assert "has no layer 'block'" in message and "train.h5" in message


# Pass 2 must read the rows of pass 1 (in any order): a model or a loader that gives other rows is refused.
OTHER_ROWS = re.compile(
    rf"the second pass over the batches gave other rows than the first \(layer '{re.escape(DEFAULT_LAYER)}', class \d: "
    r"its rows' mean moved by [0-9.e+-]+, [0-9.e+-]+% of their spread\): "
    r"dropout or BatchNorm left in training mode \(call model\.eval\(\)\), "
    r"random augmentation, or a sampler that draws other samples; measure_collapse needs the same rows twice"
)


def inputs(seed=5, n=96):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % K
    return torch.randn(n, 6, generator=generator) + labels[:, None], labels


def through(model, shuffle=True, augment=None, seed=5):
    """Batches of ``model``'s features of :func:`inputs`, a new (shuffled) pass per call, as an evaluation loop
    gives them."""
    torch.manual_seed(seed)  # the dropout masks and the loader's orders
    x, y = inputs(seed)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=shuffle)

    def batches():
        with torch.no_grad():
            for inputs_, labels in loader:
                yield model(inputs_ if augment is None else augment(inputs_)), labels

    return batches


def network(*middle) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), *middle, torch.nn.ReLU(), torch.nn.Linear(12, 5))


OTHER_ROW_SOURCES = {
    "dropout in training mode": lambda: through(network(torch.nn.Dropout(0.2)).train()),
    "BatchNorm in training mode, shuffled": lambda: through(network(torch.nn.BatchNorm1d(12)).train()),
    "noise added per pass": lambda: through(network().eval(), augment=lambda x: x + 0.1 * torch.randn_like(x)),
}


@pytest.mark.parametrize("case", OTHER_ROW_SOURCES, ids=list(OTHER_ROW_SOURCES))
def test_a_second_pass_that_gives_other_rows_is_refused_naming_the_causes(case):
    message = one_line_error(lambda: measure_collapse(OTHER_ROW_SOURCES[case](), num_classes=K, device="cpu"))
    assert OTHER_ROWS.fullmatch(message), message


def test_other_rows_are_refused_on_the_torch_backend_too(monkeypatch):
    monkeypatch.setattr("nccli.analyze.memory.select_backend", lambda device: TorchBackend("cpu"))
    assert OTHER_ROWS.fullmatch(
        one_line_error(lambda: measure_collapse(OTHER_ROW_SOURCES["dropout in training mode"](), num_classes=K))
    )


@pytest.mark.parametrize("middle", [torch.nn.Dropout(0.2), torch.nn.BatchNorm1d(12)], ids=["dropout", "BatchNorm"])
def test_the_same_model_in_eval_mode_through_a_shuffling_loader_is_measured(tmp_path, middle):
    model = network(middle)
    model[1].train()(torch.randn(32, 12))  # BatchNorm's running statistics, not its initial ones
    model.eval()
    rows = measure_collapse(through(model), num_classes=K, device="cpu")
    x, y = inputs()
    with torch.no_grad():
        expected = analyzed(tmp_path, {DEFAULT_LAYER: model(x).numpy()}, y.numpy())
    for key in ("nc1", "tr_sw", "ncc_accuracy", "nc2_equinorm"):  # float32 rows of other batches: to their rounding
        assert rows[0][key] == pytest.approx(expected[0][key], rel=1e-6), key


@pytest.mark.parametrize(
    ("dtype", "offset"),
    [(np.float16, 1e3), (np.float32, 1e3), (np.float32, 1e6), (np.float64, 1e6)],
)
def test_the_same_rows_in_another_order_pass_at_large_offsets_and_low_precision(tmp_path, dtype, offset):
    """Rows around ``offset`` with a spread of about 1 (float16: 0.5 steps at 1e3), cut and ordered otherwise on
    each pass: the residuals' sums are rounding only, far below the bound."""
    rng = np.random.default_rng(9)
    labels = np.arange(400) % K
    features = (offset + rng.normal(size=(400, 8)) + 0.5 * labels[:, None]).astype(dtype)
    passes = []

    def batches():
        passes.append(None)
        order = rng.permutation(len(labels))
        size = 7 if len(passes) == 1 else 64
        return ((features[order[i : i + size]], labels[order[i : i + size]]) for i in range(0, len(labels), size))

    rows = measure_collapse(batches, num_classes=K, device="cpu")
    expected = analyzed(tmp_path, {DEFAULT_LAYER: features}, labels)
    assert rows[0]["ncc_accuracy"] == expected[0]["ncc_accuracy"]
    assert rows[0]["nc1"] == pytest.approx(expected[0]["nc1"], rel=1e-6)


def test_analyze_refuses_a_file_whose_rows_change_between_the_passes(tmp_path, monkeypatch):
    """The check is analyze's own: a file written to between the passes is refused there too."""
    from nccli.io.reader import FeatureFile

    d = data()
    path = write_feature_file(tmp_path / "changing.h5", d["labels"], {"features": d["fc_in"]})
    read, calls = FeatureFile.blocks, []

    def blocks(self, *args, **kwargs):
        calls.append(None)
        for labels, rows in read(self, *args, **kwargs):
            yield labels, {name: block + (len(calls) > 1) for name, block in rows.items()}  # pass 2: moved by 1

    monkeypatch.setattr(FeatureFile, "blocks", blocks)
    with pytest.raises(NcCliError) as error:
        analyze_features(AnalyzeConfig(files=(str(path),), device="cpu"))
    assert str(error.value).startswith(f"'{path}': '/layers/features")
    assert "the second pass over the file gave other rows than the first (class " in str(error.value)
    assert "something wrote to it while analyze read it" in str(error.value)


def test_rows_recomputed_in_other_batch_sizes_are_measured():
    """A float32 model's rows may round otherwise in batches of another size (other BLAS kernels): not other rows."""
    model, (x, y), calls = network().eval(), inputs(n=400), []

    def batches():
        calls.append(None)
        size, order = (7, torch.arange(len(y))) if len(calls) == 1 else (64, torch.randperm(len(y)))
        with torch.no_grad():
            for i in range(0, len(y), size):
                yield model(x[order[i : i + size]]), y[order[i : i + size]]

    assert measure_collapse(batches, num_classes=K, device="cpu")[0]["n_samples"] == 400


def test_imbalanced_batches_warn_once_at_the_callers_line():
    """metrics.md: margin_normalized's balance warning once per run, pointing at the line that called nccli."""
    rng = np.random.default_rng(3)
    labels = np.repeat(np.arange(3), [40, 20, 40])
    features = rng.normal(size=(100, 4)) + labels[:, None]
    batches = [(features, labels)]
    with pytest.warns(DegenerateMetricWarning, match="20 to 40 samples per class") as record:
        measure_collapse(batches, num_classes=3, classifier=(rng.normal(size=(3, 4)), np.zeros(3)), device="cpu")
    assert len(record) == 1 and record[0].filename == __file__


def test_a_layer_name_that_is_not_a_string_is_refused_in_one_line():
    batches = [({1: torch.ones(4, 3)}, torch.tensor([0, 1, 0, 1]))]
    assert "a layer name must be a string, found 1 (int)" in one_line_error(
        lambda: measure_collapse(batches, num_classes=2)
    )


def test_a_label_space_that_cannot_fit_in_memory_is_refused_before_any_allocation():
    """analyze's memory plan: num_classes = 10**8 at d = 512 is refused in one line, not a MemoryError."""
    batches = [(torch.ones(4, 512), torch.tensor([0, 1, 0, 1]))]
    message = one_line_error(lambda: measure_collapse(batches, num_classes=10**8, device="cpu"))
    assert "num_classes = 100000000 at d = 512 needs" in message and "above the memory budget" in message
