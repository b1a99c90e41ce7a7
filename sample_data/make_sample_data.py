"""Regenerate nccli's bundled sample data: real digits and a model trained into the terminal phase.

Run from the repository root (needs scikit-learn, a development-only
dependency of this script, and torch; CPU only, about 15 seconds)::

    pip install scikit-learn
    python sample_data/make_sample_data.py

It writes, deterministically (fixed seeds, one CPU thread, deterministic
torch algorithms):

``sample_data/digits_train.npz``, ``sample_data/digits_test.npz``
    scikit-learn's bundled 8×8 handwritten digits (``load_digits``: 1 797
    images, 10 classes), split stratified into 1 347 train and 450 test images
    (``train_test_split(test_size=450, stratify=y, random_state=0)``). Each
    file holds ``x``: uint8 (N, 8, 8), the original 0..16 intensities scaled
    to 0..255 as ``round(v * 255 / 16)``; and ``y``: int64 (N,), labels 0..9.

``sample_data/checkpoints/epoch_{e:03d}.pt``
    ``{"epoch": e, "state_dict": model.state_dict()}`` of
    ``sample_data/digits_mlp.py:digits_mlp`` after epochs ``CHECKPOINT_EPOCHS``
    (1, 3, 10, 30, 100, 300).

Training (Papyan, Han & Donoho 2020 style, run well past zero training error):
inputs ``(x / 255 - DIGITS_MEAN) / DIGITS_STD`` shaped (N, 1, 8, 8); SGD with
momentum 0.9, learning rate 0.05 divided by 10 after epochs 150 and 225,
weight decay 2e-3 on every parameter, mean cross-entropy, batch size 128,
300 epochs, reshuffled each epoch, no augmentation. Training error (eval mode)
is zero at every checkpoint from epoch 10 on. The constants below are the source of truth.

The same preprocessing in ``nccli extract`` (uint8 → [0, 1] → ``--mean`` /
``--std``; no ``--resize``; the extract defaults for mean and std are *not*
these), for every checkpoint and each split (flags as drafted in issue 4)::

    nccli extract 'sample_data/checkpoints/epoch_*.pt' sample_data/digits_train.npz \\
        --arch sample_data/digits_mlp.py:digits_mlp --mean 0.3053 --std 0.3758 \\
        --out features/train/
    (the same with sample_data/digits_test.npz and the split marked test)

The epoch of each feature file comes from the checkpoint dict's ``epoch``.

At the end the script checks, on features taken with forward hooks in eval
mode and plain numpy (``metrics.md`` definitions), that the checkpoints show
neural collapse: penultimate NC1 falls ≥ 30× from the first to the last
checkpoint, NC1 falls with depth at the last epoch, train NCC accuracy is 1,
and test NC1 exceeds train NC1. It prints the numbers and exits non-zero if a
check fails.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from digits_mlp import DIGITS_MEAN, DIGITS_STD, digits_mlp  # noqa: E402

SEED = 0
TEST_SIZE = 450
NUM_CLASSES = 10
EPOCHS = 300
CHECKPOINT_EPOCHS = (1, 3, 10, 30, 100, 300)
BATCH_SIZE = 128
LR = 0.05
LR_MILESTONES = (150, 225)
MOMENTUM = 0.9
WEIGHT_DECAY = 2e-3

MIN_NC1_REDUCTION = 30.0


def make_digits(out_dir: Path) -> tuple[dict, dict]:
    """Split scikit-learn's digits stratified and save them as uint8 npz files."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=TEST_SIZE, stratify=y, random_state=SEED)
    splits = {}
    for name, xs, ys in (("train", x_train, y_train), ("test", x_test, y_test)):
        np.savez_compressed(out_dir / f"digits_{name}.npz", x=xs, y=ys)
        splits[name] = {"x": xs, "y": ys}
    return splits["train"], splits["test"]


def to_inputs(x: np.ndarray) -> torch.Tensor:
    """uint8 (N, 8, 8) → normalised float32 (N, 1, 8, 8), as ``nccli extract --mean --std`` does."""
    scaled = torch.from_numpy(x).to(torch.float32).div(255.0)
    return ((scaled - DIGITS_MEAN) / DIGITS_STD).unsqueeze(1)


def train(train: dict, checkpoint_dir: Path) -> None:
    """Train with SGD + weight decay + cross-entropy; save a checkpoint at each CHECKPOINT_EPOCHS."""
    torch.manual_seed(SEED)
    model = digits_mlp(NUM_CLASSES)
    inputs, labels = to_inputs(train["x"]), torch.from_numpy(train["y"])
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=list(LR_MILESTONES), gamma=0.1)
    loss_fn = nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(SEED)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    for epoch in range(1, EPOCHS + 1):
        model.train()
        order = torch.randperm(len(labels), generator=generator)
        total, errors = 0.0, 0
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            logits = model(inputs[batch])
            loss = loss_fn(logits, labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
            errors += int((logits.argmax(1) != labels[batch]).sum())
        schedule.step()
        if epoch in CHECKPOINT_EPOCHS:
            torch.save({"epoch": epoch, "state_dict": model.state_dict()}, checkpoint_dir / f"epoch_{epoch:03d}.pt")
            print(f"epoch {epoch:3d}  loss {total / len(labels):.5f}  train errors (train mode) {errors}")


def layer_features(model: nn.Module, x: np.ndarray) -> dict[str, np.ndarray]:
    """Eval-mode outputs of every top-level child except the classifier, by forward hooks."""
    features: dict[str, np.ndarray] = {}
    hooks = [
        module.register_forward_hook(lambda _m, _i, out, name=name: features.__setitem__(name, out.double().numpy()))
        for name, module in model.named_children()
        if name != "classifier"
    ]
    model.eval()
    with torch.no_grad():
        logits = model(to_inputs(x))
    for hook in hooks:
        hook.remove()
    features["logits"] = logits.double().numpy()
    return features


def class_means(h: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.stack([h[y == c].mean(axis=0) for c in range(NUM_CLASSES)])


def nc1(h: np.ndarray, y: np.ndarray, means: np.ndarray) -> float:
    """(1/K) tr(Σ_W Σ_B⁺), Σ_W/N around ``means``, Σ_B/K, μ_G the mean of class means, rank-(K−1) pinv."""
    centred = h - means[y]
    sigma_w = centred.T @ centred / len(y)
    m = means - means.mean(axis=0)
    sigma_b = m.T @ m / NUM_CLASSES
    values, vectors = np.linalg.eigh(sigma_b)
    keep = slice(len(values) - (NUM_CLASSES - 1), None)
    pinv = vectors[:, keep] @ np.diag(1.0 / values[keep]) @ vectors[:, keep].T
    return float(np.trace(sigma_w @ pinv) / NUM_CLASSES)


def ncc_accuracy(h: np.ndarray, y: np.ndarray, means: np.ndarray) -> float:
    distances = ((h[:, None, :] - means[None, :, :]) ** 2).sum(axis=2)
    return float((distances.argmin(axis=1) == y).mean())


def verify(train: dict, test: dict, checkpoint_dir: Path) -> bool:
    """Print NC1 / NCC per checkpoint and layer; return whether the collapse checks pass."""
    penultimate: dict[int, tuple[float, float]] = {}  # epoch -> (train nc1, test nc1)
    depthwise: list[float] = []  # train nc1 of the hidden blocks at the last epoch
    ok = True
    ytr, yte = train["y"], test["y"]
    for epoch in CHECKPOINT_EPOCHS:
        model = digits_mlp(NUM_CLASSES)
        state = torch.load(checkpoint_dir / f"epoch_{epoch:03d}.pt", weights_only=True)
        model.load_state_dict(state["state_dict"], strict=True)
        f_train, f_test = layer_features(model, train["x"]), layer_features(model, test["x"])
        clf_train = float((f_train.pop("logits").argmax(1) == ytr).mean())
        clf_test = float((f_test.pop("logits").argmax(1) == yte).mean())
        print(f"\nepoch {epoch}: classifier accuracy train {clf_train:.4f} test {clf_test:.4f}")
        print(f"  {'layer':8s} {'nc1 train':>11s} {'nc1 test':>11s} {'ncc train':>10s} {'ncc test*':>10s}")
        for name in f_train:
            mu_train = class_means(f_train[name], ytr)
            nc1_train = nc1(f_train[name], ytr, mu_train)
            nc1_test = nc1(f_test[name], yte, class_means(f_test[name], yte))
            ncc_train = ncc_accuracy(f_train[name], ytr, mu_train)
            ncc_test = ncc_accuracy(f_test[name], yte, mu_train)
            print(f"  {name:8s} {nc1_train:11.4g} {nc1_test:11.4g} {ncc_train:10.4f} {ncc_test:10.4f}")
            if epoch == CHECKPOINT_EPOCHS[-1] and name.startswith("block"):
                depthwise.append(nc1_train)
        # The last hook is block4, the classifier's input: the penultimate layer.
        penultimate[epoch] = (nc1_train, nc1_test)
        if epoch == CHECKPOINT_EPOCHS[-1] and ncc_train != 1.0:
            print(f"FAIL: train NCC accuracy {ncc_train} != 1 on '{name}' at the last epoch")
            ok = False
    print("  (* test NCC uses the train class means; test NC1 uses the test class means)")
    first, (last, last_test) = penultimate[CHECKPOINT_EPOCHS[0]][0], penultimate[CHECKPOINT_EPOCHS[-1]]
    reduction = first / last
    print(f"\npenultimate train nc1: first {first:.4g} -> last {last:.4g} ({reduction:.1f}x smaller)")
    if reduction < MIN_NC1_REDUCTION:
        print(f"FAIL: NC1 reduction {reduction:.1f}x < {MIN_NC1_REDUCTION}x")
        ok = False
    if any(deeper >= shallower for shallower, deeper in zip(depthwise, depthwise[1:])):
        print(f"FAIL: NC1 does not decrease with depth at the last epoch: {depthwise}")
        ok = False
    if not last_test > last:
        print(f"FAIL: test NC1 {last_test:.4g} is not above train NC1 {last:.4g}")
        ok = False
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="Directory to write into (default: sample_data/).")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    args.out.mkdir(parents=True, exist_ok=True)
    train_split, test_split = make_digits(args.out)
    train(train_split, args.out / "checkpoints")
    ok = verify(train_split, test_split, args.out / "checkpoints")
    print("\nall collapse checks passed" if ok else "\nsome collapse checks FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
