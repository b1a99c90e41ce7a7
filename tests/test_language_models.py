"""Token-level collapse in causal language models: every position is a row, labelled with the next token, of each
block's output and the final norm's; the classes are the vocabulary and the classifier the LM head."""

import json
import math

import h5py
import numpy as np
import pytest
import torch
from cli_helpers import assert_user_error, invoke
from extract_helpers import read_datasets
from lm_helpers import CONTEXT, SENTENCES, causal_lm, nano_gpt, trained_tokenizer

from nccli import schema

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tokenizer():
    return trained_tokenizer()


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def lm(request, tmp_path_factory, tokenizer):
    """A saved tiny causal LM with its tokenizer, the model, and a token stream of 70 ids written as .bin."""
    folder = tmp_path_factory.mktemp(request.param) / "model"
    model = causal_lm(folder, request.param, tokenizer)
    ids = np.random.default_rng(0).integers(0, len(tokenizer), size=70).astype(np.uint16)
    ids.tofile(folder.parent / "ids.bin")
    return folder, model, ids, request.param


def _blocks_and_norm(model, kind: str):
    base = model.transformer if kind == "gpt2" else model.model
    blocks = base.h if kind == "gpt2" else base.layers
    return blocks, base.ln_f if kind == "gpt2" else base.norm


def _by_hand(model, kind: str, ids: np.ndarray, seq_len: int, stride: int):
    """Each window run alone, hooks on the blocks and the final norm; the rows every position not yet seen gives."""
    blocks, norm = _blocks_and_norm(model, kind)
    modules = [*blocks, norm]
    rows = [[] for _ in modules]
    labels, index = [], []
    seen = 0
    for start in range(0, len(ids) - 1, stride):
        length = min(seq_len, len(ids) - 1 - start)
        first = max(0, seen - start)
        if first >= length:
            continue
        outputs = []
        handles = [
            m.register_forward_hook(
                lambda _m, _a, out, found=outputs: found.append(out[0] if isinstance(out, tuple) else out)
            )
            for m in modules
        ]
        with torch.no_grad():
            model(torch.from_numpy(ids[start : start + length].astype(np.int64))[None])
        for handle in handles:
            handle.remove()
        for found, output in zip(rows, outputs, strict=True):
            found.append(output[0, first:length].numpy())
        labels.append(ids[start + first + 1 : start + length + 1])
        index += [(start, position) for position in range(first, length)]
        seen = start + length
    return [np.concatenate(found) for found in rows], np.concatenate(labels), np.array(index)


def test_token_rows_equal_a_loop_over_the_models_hidden_states_bit_for_bit(lm, tmp_path):
    folder, model, ids, kind = lm
    out = tmp_path / "t.h5"
    result = invoke(
        "extract", folder, folder.parent / "ids.bin", "--token-dtype", "uint16", "--seq-len", 12, "--stride", 8,
        "--batch-size", 1, "--out", out,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert result.stderr.strip().splitlines() == [
        f"note: '{out}': /logits is not stored for token rows (rows × vocabulary values); analyze computes what "
        "it needs from /classifier"
    ]  # nothing of Hugging Face's own
    expected, labels, index = _by_hand(model, kind, ids, 12, 8)
    stored = read_datasets(out)
    np.testing.assert_array_equal(stored[schema.LABELS], labels)
    np.testing.assert_array_equal(stored[schema.SAMPLE_INDEX], index)
    assert len(labels) == len(ids) - 1  # every position once
    with h5py.File(out) as handle:
        layers = sorted(
            handle[schema.LAYERS], key=lambda name: handle[schema.layer_path(name)].attrs[schema.ATTR_ORDER]
        )
        assert handle.attrs[schema.ATTR_NUM_CLASSES] == model.config.vocab_size
        classifier_layer = handle[schema.CLASSIFIER].attrs[schema.ATTR_CLASSIFIER_LAYER]
        names = list(handle.attrs[schema.ATTR_CLASS_NAMES])
    assert layers[-1] == classifier_layer and len(layers) == 3
    for layer, rows in zip(layers, expected, strict=True):
        np.testing.assert_array_equal(stored[schema.layer_path(layer)], rows, err_msg=layer)
    np.testing.assert_array_equal(stored["classifier/weight"], model.lm_head.weight.detach().numpy())
    assert "classifier/bias" not in stored
    assert names[:2] == ["<unk>", "<eos>"] and len(names) == model.config.vocab_size


def test_batched_windows_and_analyze(lm, tmp_path):
    folder, model, ids, kind = lm
    out = tmp_path / "b.h5"
    result = invoke(
        "extract", folder, folder.parent / "ids.bin", "--token-dtype", "uint16", "--batch-size", 3, "--out", out
    )
    assert result.exit_code == 0, result.stderr
    expected, labels, _ = _by_hand(model, kind, ids, CONTEXT, CONTEXT)  # default: the context, no overlap
    stored = read_datasets(out)
    np.testing.assert_array_equal(stored[schema.LABELS], labels)
    with h5py.File(out) as handle:
        final = handle[schema.CLASSIFIER].attrs[schema.ATTR_CLASSIFIER_LAYER]
    np.testing.assert_allclose(stored[schema.layer_path(final)], expected[-1], rtol=1e-5, atol=1e-6)
    report = tmp_path / "r.parquet"
    assert invoke("analyze", out, "--out", report).exit_code == 0
    import pyarrow.parquet as pq

    table = pq.read_table(report).to_pylist()
    assert [row["n_classes"] for row in table] == [len(np.unique(labels))] * 3  # the tokens present
    assert all(row["n_samples"] == len(ids) - 1 for row in table)


def test_the_forward_pass_stops_after_the_last_chosen_layer(lm, tmp_path, monkeypatch):
    """The LM head's logits (rows × vocabulary) are never computed for the rows (only once, for the probe when
    the model is loaded), nor the blocks after the last chosen layer."""
    folder, model, ids, kind = lm
    blocks, _ = _blocks_and_norm(model, kind)
    calls = []
    for module_type in (type(blocks[0]), torch.nn.Linear):
        original = module_type.forward
        monkeypatch.setattr(
            module_type, "forward", lambda self, *a, run=original, **k: calls.append(self) or run(self, *a, **k)
        )

    def heads() -> int:
        return sum(isinstance(c, torch.nn.Linear) and c.out_features == model.config.vocab_size for c in calls)

    def ran() -> int:
        return sum(isinstance(c, type(blocks[0])) for c in calls)

    common = (folder, folder.parent / "ids.bin", "--token-dtype", "uint16", "--batch-size", 1, "--seq-len", 8)
    assert invoke("extract", *common, "--out", tmp_path / "all.h5").exit_code == 0
    windows = math.ceil((len(ids) - 1) / 8)
    assert (heads(), ran()) == (1, len(blocks) * (1 + windows))  # the probe's, then the blocks of every window
    calls.clear()
    first_block = {"gpt2": "transformer.h.0", "llama": "model.layers.0"}[kind]
    assert invoke("extract", *common, "--layers", first_block, "--out", tmp_path / "first.h5").exit_code == 0
    assert (heads(), ran()) == (1, len(blocks) + windows)  # the first block of each window only
    np.testing.assert_array_equal(
        read_datasets(tmp_path / "first.h5")[schema.layer_path(first_block)],
        read_datasets(tmp_path / "all.h5")[schema.layer_path(first_block)],
    )


@pytest.mark.parametrize("suffix", [".txt", ".jsonl"])
def test_text_is_read_by_the_models_tokenizer(lm, tokenizer, tmp_path, suffix):
    folder = lm[0]
    data = tmp_path / f"text{suffix}"
    if suffix == ".txt":
        data.write_text(" ".join(SENTENCES))
        expected = tokenizer(" ".join(SENTENCES), add_special_tokens=False)["input_ids"]
    else:
        data.write_text("\n".join(json.dumps({"story": sentence}) for sentence in SENTENCES) + "\n")
        expected = []
        for number, sentence in enumerate(SENTENCES):
            expected += ([tokenizer.eos_token_id] if number else []) + tokenizer(sentence, add_special_tokens=False)[
                "input_ids"
            ]
    out = tmp_path / "x.h5"
    result = invoke(
        "extract", folder, data, "--text-field", "story", "--max-tokens", 20, "--layers", "*.1", "--out", out
    )
    assert result.exit_code == 0, result.stderr
    stored = read_datasets(out)
    np.testing.assert_array_equal(stored[schema.LABELS], expected[1:21])
    assert [name.split("/")[-1] for name in stored if name.startswith("layers/")] == [
        "model.layers.1" if lm[3] == "llama" else "transformer.h.1"
    ]


def test_a_nanogpt_state_dict_with_arch_reads_npy_ids(tmp_path):
    model = nano_gpt().eval()
    torch.save(model.state_dict(), tmp_path / "ckpt.pt")
    ids = np.random.default_rng(1).integers(0, 40, size=40).astype(np.int64)
    np.save(tmp_path / "ids.npy", ids)
    out = tmp_path / "n.h5"
    result = invoke(
        "extract",
        tmp_path / "ckpt.pt",
        tmp_path / "ids.npy",
        "--arch",
        "lm_helpers:nano_gpt",
        "--batch-size",
        1,
        "--out",
        out,
    )
    assert result.exit_code == 0, result.stderr
    stored = read_datasets(out)
    np.testing.assert_array_equal(stored[schema.LABELS], ids[1:])
    modules = [*model.transformer["h"], model.transformer["ln_f"]]  # hooked as extract hooks them: a hook on an
    outputs = [[] for _ in modules]  # encoder layer turns PyTorch's fused path off, which rounds otherwise
    handles = [
        module.register_forward_hook(lambda _m, _a, output, found=found: found.append(output[0]))
        for module, found in zip(modules, outputs, strict=True)
    ]
    with torch.inference_mode():
        for start in range(0, len(ids) - 1, CONTEXT):
            model(torch.from_numpy(ids[start : min(start + CONTEXT, len(ids) - 1)])[None])
    for handle in handles:
        handle.remove()
    for name, found in zip(["transformer.h.0", "transformer.h.1", "transformer.ln_f"], outputs, strict=True):
        np.testing.assert_array_equal(stored[f"layers/{name}"], torch.cat(found).numpy(), err_msg=name)
    np.testing.assert_array_equal(stored["classifier/weight"], model.lm_head.weight.detach().numpy())


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("bad") / "gpt2"
    causal_lm(folder, "gpt2", tokenizer)
    return folder


@pytest.mark.parametrize(
    ("make", "options", "fragments"),
    [
        (
            "late_bad_id",
            ("--token-dtype", "uint32", "--batch-size", 1),
            ("token 9000 is id 5000, outside the model's vocabulary",),
        ),
        ("odd_bin", ("--token-dtype", "uint32"), ("has 6 bytes, not a multiple of 4 (uint32 ids)",)),
        ("odd_bin", (), ("say its width with --token-dtype uint16|uint32",)),
        ("text", ("--seq-len", CONTEXT + 1), (f"--seq-len {CONTEXT + 1} is above the model's context of {CONTEXT}",)),
        ("text", ("--resize", 32), ("--resize: for images", "is token DATA for a language model")),
        ("text", ("--layers", "nope*"), ("--layers 'nope*' matches no layer of the language model",)),
        ("matrix", (), ("holds int64 of shape (4, 5); token ids are one dimension of integers",)),
    ],
)
def test_bad_token_input_is_one_line(gpt2, tmp_path, make, options, fragments):
    data = {
        "late_bad_id": lambda: _write(tmp_path / "ids.bin", np.r_[np.zeros(9000), 5000].astype(np.uint32)),
        "odd_bin": lambda: (tmp_path / "odd.bin").write_bytes(b"\0" * 6) and tmp_path / "odd.bin",
        "text": lambda: (tmp_path / "t.txt").write_text(" ".join(SENTENCES)) and tmp_path / "t.txt",
        "matrix": lambda: np.save(tmp_path / "m.npy", np.zeros((4, 5), dtype=np.int64)) or tmp_path / "m.npy",
    }[make]()
    result = invoke("extract", gpt2, data, *options, "--out", tmp_path / "f.h5")
    assert_user_error(result, *fragments)
    assert not list(tmp_path.glob("f.h5*"))


def _write(path, ids):
    ids.tofile(path)
    return path


def test_text_without_a_tokenizer_and_a_folder_that_is_not_a_model(tmp_path):
    causal_lm(tmp_path / "no-tokenizer", "gpt2")
    (tmp_path / "t.txt").write_text("some text")
    assert_user_error(
        invoke("extract", tmp_path / "no-tokenizer", tmp_path / "t.txt", "--out", tmp_path / "f.h5"),
        "is text, and the model has no tokenizer",
    )
    (tmp_path / "empty").mkdir()
    assert_user_error(
        invoke("extract", tmp_path / "empty", tmp_path / "t.txt", "--out", tmp_path / "f.h5"),
        "is a folder but not a Hugging Face model (it has no config.json)",
    )


def test_an_interrupted_token_extraction_resumes_to_the_same_file(gpt2, tmp_path, monkeypatch):
    from extract_helpers import differences

    from nccli.extract import token_rows

    ids = np.random.default_rng(3).integers(0, 40, size=60).astype(np.uint16)
    ids.tofile(tmp_path / "ids.bin")
    common = ("extract", gpt2, tmp_path / "ids.bin", "--token-dtype", "uint16", "--batch-size", 1)
    assert invoke(*common, "--out", tmp_path / "whole.h5").exit_code == 0
    original = token_rows.token_batches

    def interrupted(*args, **kwargs):
        for number, batch in enumerate(original(*args, **kwargs)):
            if number == 2:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr("nccli.extract.token_runner.token_batches", interrupted)
    stopped = invoke(*common, "--out", tmp_path / "f.h5")
    assert stopped.exit_code == 130 and "rerun the same command with --resume" in stopped.stderr
    assert (tmp_path / "f.h5.partial").exists() and not (tmp_path / "f.h5").exists()
    monkeypatch.setattr("nccli.extract.token_runner.token_batches", original)
    assert_user_error(invoke(*common, "--out", tmp_path / "f.h5"), "pass --resume to continue it")
    resumed = invoke(*common, "--out", tmp_path / "f.h5", "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert differences(tmp_path / "f.h5", tmp_path / "whole.h5") == []
    again = invoke(*common, "--out", tmp_path / "f.h5", "--resume")
    assert again.exit_code == 0 and "already complete" in again.stderr
