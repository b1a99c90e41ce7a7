"""`nccli convert`: arrays saved by other tools become feature files that analyze exactly like h5py-written ones."""

import io
import json
import math
import os
import struct
import zipfile

import h5py
import numpy as np
import pytest
import torch
from cli_helpers import assert_user_error, invoke
from h5files import write_feature_file
from safetensors.numpy import save_file

from nccli import schema
from nccli.analyze.analysis import AnalyzeConfig, analyze_features
from nccli.extract.capture import pool_rows

N, K = 40, 4


def arrays(seed=0) -> dict[str, np.ndarray]:
    """Labels, two layers (float32 and float64), a classifier on the second and logits."""
    rng = np.random.default_rng(seed)
    labels = np.arange(N) % K
    fc_in = rng.normal(size=(N, 5)) + labels[:, None]
    return {
        "labels": labels,
        "block": np.tanh(fc_in @ rng.normal(size=(5, 7))).astype(np.float32),
        "features": fc_in,
        "W": rng.normal(size=(K, 5)),
        "b": rng.normal(size=K),
        "logits": rng.normal(size=(N, K)).astype(np.float32),
    }


def summary(path) -> list[dict]:
    rows = analyze_features(AnalyzeConfig(files=(str(path),), device="cpu")).summary
    return [{key: value for key, value in row.items() if key != schema.COL_FILE} for row in rows]


def assert_same_summary(actual: list[dict], expected: list[dict]):
    """Equal to rounding: the files' chunks, hence analyze's blocks, differ."""
    assert [row[schema.COL_LAYER] for row in actual] == [row[schema.COL_LAYER] for row in expected]
    for got, want in zip(actual, expected):
        assert set(got) == set(want)
        for key, value in want.items():
            if isinstance(value, float) and math.isnan(value):
                assert math.isnan(got[key]), key
            elif isinstance(value, float):
                assert got[key] == pytest.approx(value, rel=1e-10, abs=1e-12), key
            else:
                assert got[key] == value, key


def expected_summary(folder, data) -> list[dict]:
    """analyze of the same arrays written with plain h5py."""
    path = write_feature_file(
        folder / "reference.h5",
        data["labels"],
        {"block": data["block"], "fc_in": data["features"]},
        weight=data["W"],
        bias=data["b"],
        classifier_layer="fc_in",
        logits=data["logits"],
    )
    return summary(path)


def save_npy(folder, data):
    paths = []
    for key, value in data.items():
        np.save(folder / f"{key}.npy", value)
        paths.append(folder / f"{key}.npy")
    return paths


def save_npz(folder, data):
    np.savez(folder / "run.npz", **data, note=np.array(["keys not asked for may hold anything"]))
    return [folder / "run.npz"]


def save_npz_compressed_fortran(folder, data):
    np.savez_compressed(folder / "run.npz", **{key: np.asfortranarray(value) for key, value in data.items()})
    return [folder / "run.npz"]


def save_pt_tensors(folder, data):
    torch.save({key: torch.from_numpy(value) for key, value in data.items()}, folder / "run.pt")
    return [folder / "run.pt"]


def save_pth_arrays(folder, data):
    torch.save(dict(data), folder / "run.pth")
    return [folder / "run.pth"]


def save_safetensors(folder, data):
    save_file(dict(data), str(folder / "run.safetensors"))
    return [folder / "run.safetensors"]


def save_mixed(folder, data):
    """Several sources form one key space."""
    np.save(folder / "labels.npy", data["labels"])
    save_file({"block": data["block"], "logits": data["logits"]}, str(folder / "a.safetensors"))
    np.savez(folder / "b.npz", features=data["features"], W=data["W"], b=data["b"])
    return [folder / "labels.npy", folder / "a.safetensors", folder / "b.npz"]


SAVERS = [
    save_npy,
    save_npz,
    save_npz_compressed_fortran,
    save_pt_tensors,
    save_pth_arrays,
    save_safetensors,
    save_mixed,
]


@pytest.mark.parametrize("save", SAVERS, ids=lambda save: save.__name__)
def test_each_format_round_trips_to_what_analyze_reads_from_an_h5py_file(tmp_path, monkeypatch, save):
    monkeypatch.setattr("nccli.convert.BLOCK_BYTES", 200)  # several blocks per array: streams are read in steps
    data = arrays()
    out = tmp_path / "converted.h5"
    result = invoke(
        "convert", *save(tmp_path, data), "--features", "block", "--features", "features=fc_in", "--out", out
    )
    assert result.exit_code == 0, result.output
    assert_same_summary(summary(out), expected_summary(tmp_path, data))
    with h5py.File(out) as handle:
        assert handle[schema.CLASSIFIER].attrs[schema.ATTR_CLASSIFIER_LAYER] == "fc_in"  # the only layer as wide as W
        np.testing.assert_array_equal(handle[schema.LOGITS][()], data["logits"])
        np.testing.assert_array_equal(handle[schema.layer_path("fc_in")][()], data["features"])
    assert not [name for name in os.listdir(tmp_path) if name.startswith("converted.h5.")]  # no partial file, no lock


def test_usual_key_names_need_no_options_and_provenance_is_recorded(tmp_path):
    source = tmp_path / "dump.pt"
    torch.save({"feats": torch.randn(N, 3, dtype=torch.bfloat16), "targets": torch.arange(N) % K}, source)
    names = tmp_path / "names.txt"
    names.write_text("".join(f"class {i}\n" for i in range(K)))
    out = tmp_path / "dump.h5"
    result = invoke("convert", source, "--out", out, "--class-names", names, "--split", "test", "--epoch", 7)
    assert result.exit_code == 0, result.output
    with h5py.File(out) as handle:
        attrs = handle.attrs
        assert (
            attrs[schema.ATTR_SPLIT] == "test" and attrs[schema.ATTR_EPOCH] == 7 and attrs[schema.ATTR_NUM_CLASSES] == K
        )
        assert json.loads(attrs[schema.ATTR_SOURCES]) == [str(source)]
        assert "convert" in attrs[schema.ATTR_COMMAND] and str(source) in attrs[schema.ATTR_COMMAND]
        assert [name.decode() if isinstance(name, bytes) else name for name in attrs[schema.ATTR_CLASS_NAMES]][
            -1
        ] == "class 3"
        assert handle[schema.layer_path("feats")].dtype == np.float32  # bfloat16 widened exactly
        assert schema.CLASSIFIER not in handle


@pytest.mark.parametrize("pool", ["avg", "max", "flatten"])
def test_feature_maps_are_pooled_as_extract_pools_them(tmp_path, pool):
    rng = np.random.default_rng(2)
    maps = rng.normal(size=(N, 3, 4, 2))
    np.savez(tmp_path / "maps.npz", x=maps, y=np.arange(N) % K)
    out = tmp_path / "maps.h5"
    assert invoke("convert", tmp_path / "maps.npz", "--pool", pool, "--out", out).exit_code == 0
    with h5py.File(out) as handle:
        layer = handle[schema.layer_path("x")]
        np.testing.assert_array_equal(layer[()], pool_rows(torch.from_numpy(maps), pool).numpy())
        assert layer.attrs[schema.ATTR_POOLING] == pool and list(layer.attrs[schema.ATTR_SAMPLE_SHAPE]) == [3, 4, 2]


class Payload:
    """Unpickling this object would create ``marker``: what a malicious .pt file could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_payload_in_a_pt_file_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    source = tmp_path / "evil.pt"
    torch.save(
        {"features": torch.zeros(N, 2), "labels": torch.zeros(N, dtype=torch.long), "extra": Payload(str(marker))},
        source,
    )
    assert not marker.exists()
    result = invoke("convert", source, "--out", tmp_path / "evil.h5")
    assert_user_error(result, "evil.pt", "never unpickles")
    assert not marker.exists()
    assert not (tmp_path / "evil.h5").exists()


BAD_INPUTS = {
    "missing key": (lambda d: d, ["--features", "nope"], "--features 'nope': no such key"),
    "no labels key": (lambda d: {k: v for k, v in d.items() if k != "labels"}, [], "no labels key"),
    "row counts differ": (lambda d: {**d, "features": d["features"][:-1]}, [], "has 39 rows but the labels"),
    "float labels": (
        lambda d: {**d, "labels": d["labels"].astype(np.float32)},
        [],
        "labels must be a 1-D integer array",
    ),
    "label out of range": (lambda d: d, ["--num-classes", "3"], "label 3 outside [0, 3)"),
    "negative label": (lambda d: {**d, "labels": d["labels"] - 1}, [], "label -1 outside"),
    "uint64 label past int64": (
        lambda d: {**d, "labels": np.where(np.arange(N) == 7, 2**63, d["labels"]).astype(np.uint64)},
        [],
        "label 9223372036854775808 does not fit int64",
    ),
    "integer features": (
        lambda d: {**d, "features": d["labels"][:, None].repeat(2, 1)},
        [],
        "features must be float16/32/64",
    ),
    "NaN features": (
        lambda d: {**d, "features": np.where(np.arange(N)[:, None] == 31, np.nan, d["features"])},
        [],
        "non-finite feature value (NaN or Inf) in row 31",
    ),
    "NaN logits": (
        lambda d: {**d, "logits": np.where(np.arange(N)[:, None] == 33, np.inf, d["features"][:, :4])},
        ["--logits", "logits"],
        "non-finite logit (NaN or Inf) in row 33",
    ),
    "epoch past int64": (lambda d: d, ["--epoch", str(10**29)], f"--epoch {10**29} does not fit int64"),
    "W width": (lambda d: {**d, "W": d["W"][:, :3]}, [], "the classifier weight has width 3"),
    "W rows": (
        lambda d: {**d, "W": np.vstack([d["W"], d["W"]])},
        ["--num-classes", "4"],
        "has 8 rows but num_classes is 4",
    ),
    "bias shape": (lambda d: {**d, "b": d["b"][:2]}, [], "the classifier bias must be float of shape (4,)"),
    "layer name with a slash": (lambda d: d, ["--features", "features=a/b"], "layer name 'a/b'"),
    "tokens need flatten": (lambda d: {**d, "features": d["features"][:, :, None]}, [], "--pool flatten"),
    "empty maps": (
        lambda d: {**d, "features": np.zeros((N, 5, 0, 0), dtype=np.float32)},
        [],
        "with no values per sample to pool",
    ),
    "bias without weight": (
        lambda d: {k: v for k, v in d.items() if k != "W"},
        ["--bias", "b"],
        "--bias needs --weight",
    ),
    "ambiguous classifier layer": (
        lambda d: d,
        ["--features", "features", "--features", "features2"],
        "name the layer with --classifier-layer",
    ),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_inputs_give_one_line_exit_2_and_no_file(tmp_path, monkeypatch, case):
    monkeypatch.setattr("nccli.convert.BLOCK_BYTES", 200)  # the NaN row is found in a later block, mid-write
    change, options, fragment = BAD_INPUTS[case]
    data = {k: v for k, v in arrays().items() if k != "logits"}
    data["features2"] = data["features"] * 2
    np.savez(tmp_path / "run.npz", **change(data))
    result = invoke("convert", tmp_path / "run.npz", *options, "--out", tmp_path / "out.h5")
    assert_user_error(result, fragment)
    assert os.listdir(tmp_path) == ["run.npz"]


def test_a_key_in_two_sources_is_refused(tmp_path):
    np.save(tmp_path / "labels.npy", np.arange(N) % K)
    np.savez(tmp_path / "more.npz", labels=np.arange(N) % K, x=np.zeros((N, 2)))
    result = invoke("convert", tmp_path / "labels.npy", tmp_path / "more.npz", "--out", tmp_path / "out.h5")
    assert_user_error(result, "key 'labels' is in both")
    assert not (tmp_path / "out.h5").exists()


def test_an_existing_file_is_replaced_only_with_overwrite(tmp_path):
    np.savez(tmp_path / "run.npz", x=np.ones((N, 2)) * (np.arange(N) % K)[:, None], y=np.arange(N) % K)
    out = tmp_path / "out.h5"
    out.write_bytes(b"keep me")
    assert_user_error(invoke("convert", tmp_path / "run.npz", "--out", out), "already exists", "--overwrite")
    assert out.read_bytes() == b"keep me"
    assert_user_error(
        invoke("convert", tmp_path / "run.npz", "--out", out, "--overwrite", "--labels", "x"), "labels must be"
    )
    assert out.read_bytes() == b"keep me"
    assert invoke("convert", tmp_path / "run.npz", "--out", out, "--overwrite").exit_code == 0
    assert h5py.is_hdf5(out)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".pt", ".safetensors"])
def test_analyze_points_these_formats_to_convert(tmp_path, suffix):
    path = tmp_path / f"feats{suffix}"
    data = {"x": np.zeros((N, 2), dtype=np.float32), "y": np.arange(N) % K}
    {
        ".npy": lambda: np.save(path, data["x"]),
        ".npz": lambda: np.savez(path, **data),
        ".pt": lambda: torch.save(data, path),
        ".safetensors": lambda: save_file(data, str(path)),
    }[suffix]()
    result = invoke("analyze", path, "--out", tmp_path / "r.parquet")
    assert_user_error(result, "not an HDF5 feature file", f"nccli convert {path} --out feats.h5")
    assert not (tmp_path / "r.parquet").exists()


def test_a_damaged_npz_member_gives_one_line_and_no_file(tmp_path):
    rng = np.random.default_rng(3)
    source = tmp_path / "run.npz"
    np.savez_compressed(source, x=rng.normal(size=(2000, 8)), y=np.arange(2000) % K)
    damaged = bytearray(source.read_bytes())
    damaged[len(damaged) // 3 : len(damaged) // 3 + 64] = bytes(64)  # inside x's deflate stream
    source.write_bytes(bytes(damaged))
    result = invoke("convert", source, "--out", tmp_path / "out.h5")
    assert_user_error(result, "key 'x' of", "cannot be read")
    assert os.listdir(tmp_path) == ["run.npz"]


def test_a_source_reached_through_a_link_is_never_the_output(tmp_path):
    """--out naming a source through a symlink, or through a symlinked folder, is refused even with --overwrite."""
    np.savez(tmp_path / "run.npz", x=np.ones((N, 2)) * (np.arange(N) % K)[:, None], y=np.arange(N) % K)
    before = (tmp_path / "run.npz").read_bytes()
    (tmp_path / "link.npz").symlink_to(tmp_path / "run.npz")
    (tmp_path / "folder").symlink_to(tmp_path)
    for source, out in ((tmp_path / "link.npz", tmp_path / "run.npz"), (tmp_path / "run.npz", tmp_path / "link.npz"),
                        (tmp_path / "run.npz", tmp_path / "folder" / "run.npz")):  # fmt: skip
        assert_user_error(invoke("convert", source, "--out", out, "--overwrite"), "is also a SOURCE")
    assert (tmp_path / "run.npz").read_bytes() == before


def test_working_file_names_are_refused_as_outputs_and_a_planted_link_is_not_followed(tmp_path):
    np.savez(tmp_path / "run.npz", x=np.ones((N, 2)) * (np.arange(N) % K)[:, None], y=np.arange(N) % K)
    for name in ("k.h5.partial", "k.h5.partial.new", "k.h5.lock"):
        assert_user_error(invoke("convert", tmp_path / "run.npz", "--out", tmp_path / name), "nccli's working files")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "k.h5.partial.new").symlink_to(victim)  # where convert builds the file
    assert invoke("convert", tmp_path / "run.npz", "--out", tmp_path / "k.h5").exit_code == 0
    assert victim.read_text() == "precious" and h5py.is_hdf5(tmp_path / "k.h5")


def test_the_output_folder_is_created_as_extract_creates_it(tmp_path):
    np.savez(tmp_path / "run.npz", x=np.ones((N, 2)) * (np.arange(N) % K)[:, None], y=np.arange(N) % K)
    out = tmp_path / "new" / "deeper" / "run.h5"
    assert invoke("convert", tmp_path / "run.npz", "--out", out).exit_code == 0
    assert h5py.is_hdf5(out)
    (tmp_path / "plain").write_text("a file, not a folder")
    assert_user_error(invoke("convert", tmp_path / "run.npz", "--out", tmp_path / "plain" / "x.h5"), "not a directory")


def test_an_interrupted_conversion_is_not_told_to_resume_with_extract(tmp_path):
    np.savez(tmp_path / "run.npz", x=np.ones((N, 2)) * (np.arange(N) % K)[:, None], y=np.arange(N) % K)
    out = tmp_path / "k.h5"
    assert invoke("convert", tmp_path / "run.npz", "--out", out).exit_code == 0
    with h5py.File(out, "r+") as handle:  # as a conversion killed before it finished leaves it
        handle.attrs["complete"] = False
    result = invoke("analyze", out, "--out", tmp_path / "r.parquet")
    assert_user_error(result, "'complete' is False", "run `nccli convert` again")


def test_a_classifier_declaring_more_rows_than_analyze_takes_is_refused_before_it_is_read(tmp_path):
    """A small .npz whose W member declares 400 million rows: one line, no allocation of gigabytes."""
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (400000000, 5), }"
    header += " " * (118 - len(header)) + "\n"
    with zipfile.ZipFile(tmp_path / "run.npz", "w") as archive:
        for key, value in arrays().items():
            if key != "W":
                buffer = io.BytesIO()
                np.save(buffer, value)
                archive.writestr(f"{key}.npy", buffer.getvalue())
        archive.writestr("W.npy", b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + bytes(80))
    result = invoke("convert", tmp_path / "run.npz", "--features", "features", "--out", tmp_path / "out.h5")
    assert_user_error(result, "the classifier weight has 400000000 rows; expected 1 to")
    assert sorted(os.listdir(tmp_path)) == ["run.npz"]


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (lambda x: x.to_sparse(), "is a sparse tensor, not rows of numbers; save tensor.to_dense()"),
        (lambda x: torch.empty(x.shape, device="meta"), "is a meta tensor"),
        (
            lambda x: torch.quantize_per_tensor(x.float(), 0.1, 0, torch.qint8),
            "is a quantized tensor, not rows of numbers; save tensor.dequantize()",
        ),
    ],
    ids=["sparse", "meta", "quantized"],
)
def test_tensors_that_are_not_dense_rows_are_refused_in_one_line(tmp_path, make, fragment):
    data = {key: torch.from_numpy(value) for key, value in arrays().items()}
    data["features"] = make(data["features"])
    torch.save(data, tmp_path / "run.pt")
    result = invoke("convert", tmp_path / "run.pt", "--features", "features", "--out", tmp_path / "out.h5")
    assert_user_error(result, "key 'features'", fragment)
    assert sorted(os.listdir(tmp_path)) == ["run.pt"]
