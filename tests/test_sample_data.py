"""The bundled sample data: documented shapes and dtypes, a buildable architecture, loadable checkpoints.

What the files must be is documented in ``sample_data/make_sample_data.py``.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

SAMPLE_DATA = Path(__file__).resolve().parents[1] / "sample_data"
CHECKPOINTS = SAMPLE_DATA / "checkpoints"
EPOCHS = (1, 3, 10, 30, 100, 300)
SPLIT_SIZES = {"train": 1347, "test": 450}
NUM_CLASSES = 10
MAX_BYTES = 20 * 1024 * 1024


def _load_arch_module():
    """Import ``sample_data/digits_mlp.py`` by path, as ``--arch FILE.py:CALLABLE`` does."""
    spec = importlib.util.spec_from_file_location("digits_mlp_under_test", SAMPLE_DATA / "digits_mlp.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def arch():
    return _load_arch_module()


def _split(name: str) -> dict[str, np.ndarray]:
    with np.load(SAMPLE_DATA / f"digits_{name}.npz") as data:
        return {key: data[key] for key in data.files}


def _inputs(arch, x: np.ndarray):
    scaled = torch.from_numpy(x).to(torch.float32) / 255.0
    return ((scaled - arch.DIGITS_MEAN) / arch.DIGITS_STD).unsqueeze(1)


@pytest.mark.parametrize("name", sorted(SPLIT_SIZES))
def test_split_has_documented_shapes_dtypes_and_classes(name):
    data = _split(name)
    assert set(data) == {"x", "y"}
    x, y = data["x"], data["y"]
    assert x.dtype == np.uint8 and x.shape == (SPLIT_SIZES[name], 8, 8)
    assert y.dtype == np.int64 and y.shape == (SPLIT_SIZES[name],)
    assert x.min() == 0 and x.max() == 255
    counts = np.bincount(y, minlength=NUM_CLASSES)
    assert len(counts) == NUM_CLASSES
    # Stratified: every class present, sizes within a few images of each other.
    assert counts.min() > 0 and counts.max() - counts.min() <= 0.05 * SPLIT_SIZES[name]


def test_splits_are_disjoint_and_cover_the_1797_digits():
    train, test = _split("train"), _split("test")
    assert len(train["y"]) + len(test["y"]) == 1797
    train_rows = {row.tobytes() + bytes([label]) for row, label in zip(train["x"], train["y"])}
    test_rows = {row.tobytes() + bytes([label]) for row, label in zip(test["x"], test["y"])}
    # Digits has a handful of duplicate images; a leaky split would share hundreds.
    assert len(train_rows & test_rows) <= 5


def test_normalisation_constants_are_the_train_pixel_statistics(arch):
    pixels = _split("train")["x"].astype(np.float64) / 255.0
    assert arch.DIGITS_MEAN == pytest.approx(pixels.mean(), abs=5e-5)
    assert arch.DIGITS_STD == pytest.approx(pixels.std(), abs=5e-5)


def test_architecture_builds_with_named_blocks_and_a_biased_linear_classifier(arch):
    model = arch.digits_mlp(NUM_CLASSES)
    names = [name for name, _ in model.named_children()]
    assert names == ["flatten", "block1", "block2", "block3", "block4", "classifier"]
    assert isinstance(model.classifier, torch.nn.Linear) and model.classifier.bias is not None
    model.eval()
    with torch.no_grad():
        logits = model(torch.zeros(3, 1, 8, 8))
    assert logits.shape == (3, NUM_CLASSES)


def test_checkpoint_files_are_the_documented_epochs():
    assert sorted(path.name for path in CHECKPOINTS.glob("*.pt")) == [f"epoch_{e:03d}.pt" for e in EPOCHS]


@pytest.mark.parametrize("epoch", EPOCHS)
def test_checkpoint_loads_strictly_into_the_architecture(arch, epoch):
    checkpoint = torch.load(CHECKPOINTS / f"epoch_{epoch:03d}.pt", map_location="cpu", weights_only=True)
    assert set(checkpoint) == {"epoch", "state_dict"}
    assert checkpoint["epoch"] == epoch
    model = arch.digits_mlp(NUM_CLASSES)
    model.load_state_dict(checkpoint["state_dict"], strict=True)


def test_last_checkpoint_fits_the_training_split_in_eval_mode(arch):
    # The terminal phase of training: zero training error with the documented preprocessing.
    checkpoint = torch.load(CHECKPOINTS / f"epoch_{EPOCHS[-1]:03d}.pt", map_location="cpu", weights_only=True)
    model = arch.digits_mlp(NUM_CLASSES)
    model.load_state_dict(checkpoint["state_dict"])
    model.eval()
    train = _split("train")
    with torch.no_grad():
        predictions = model(_inputs(arch, train["x"])).argmax(dim=1).numpy()
    assert (predictions == train["y"]).all()


def test_sample_data_stays_small():
    total = sum(path.stat().st_size for path in SAMPLE_DATA.rglob("*") if path.is_file())
    assert total <= MAX_BYTES
