"""Small models, data and checks for the extract tests: offline, CPU, 32×32 images or smaller.

The models are importable as ``--arch extract_helpers:tiny_cnn`` and
``--arch extract_helpers:tiny_vit`` because pytest puts ``tests/`` on
``sys.path``.
"""

from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # the documented statistics of --normalize imagenet, typed out independently
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET = ("--normalize", "imagenet")  # for tests whose images need some normalisation, not a particular one


class TinyCNN(nn.Module):
    """conv → bn → one in-place ReLU used twice → conv block → pool → linear classifier."""

    def __init__(self, num_classes: int = 10, width: int = 8):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.block = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.relu(self.block(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def tiny_cnn(num_classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    model = TinyCNN(num_classes)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval mode differs from identity
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model


def tiny_vit(num_classes: int = 10) -> nn.Module:
    """A torchvision VisionTransformer small enough for tests: 32×32 images, 16 patches, 2 layers."""
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=num_classes
    )


def random_images(n: int = 24, size: int = 32, classes: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 N×H×W×3 images and int64 labels covering every class."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    labels = (np.arange(n) % classes).astype(np.int64)
    return images, labels


def write_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    np.savez(path, x=images, y=labels)
    return path


def unit_inputs(images: np.ndarray) -> torch.Tensor:
    """``--normalize none`` written out by hand: uint8 NHWC → [0, 1], NCHW."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def reference_inputs(images: np.ndarray) -> torch.Tensor:
    """``--normalize imagenet`` written out by hand: uint8 NHWC → [0, 1] → ImageNet normalisation, NCHW."""
    x = unit_inputs(images)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def reference_outputs(model: nn.Module, inputs: torch.Tensor, modules: list[str], inputs_of: list[str] = ()):
    """Each named module's outputs (every call, cloned when produced) and inputs, plus the logits."""
    outputs: dict[str, list[torch.Tensor]] = {name: [] for name in modules}
    captured_inputs: dict[str, torch.Tensor] = {}
    named = dict(model.named_modules())
    handles = [
        named[name].register_forward_hook(lambda _m, _i, out, name=name: outputs[name].append(_first(out).clone()))
        for name in modules
    ]
    handles += [
        named[name].register_forward_pre_hook(
            lambda _m, args, name=name: captured_inputs.__setitem__(name, args[0].clone())
        )
        for name in inputs_of
    ]
    model.eval()
    with torch.no_grad():
        logits = model(inputs)
    for handle in handles:
        handle.remove()
    return outputs, captured_inputs, logits


def _first(value):
    return value if isinstance(value, torch.Tensor) else value[0]


def read_datasets(path: Path) -> dict[str, np.ndarray]:
    """Every dataset of an HDF5 file by path."""
    found = {}
    with h5py.File(path, "r") as handle:
        handle.visititems(
            lambda name, node: found.__setitem__(name, node[()]) if isinstance(node, h5py.Dataset) else None
        )
    return found


def files_in(directory: Path) -> set[str]:
    return {str(path.relative_to(directory)) for path in directory.rglob("*")}


def datasets_of(path) -> dict:
    """Every dataset's values, dtype, chunks and filters."""
    found = {}

    def visit(name, node):
        if isinstance(node, h5py.Dataset):
            found[name] = (node[()], node.dtype, node.chunks, node.compression, node.shuffle)

    with h5py.File(path, "r") as handle:
        handle.visititems(visit)
    return found


def differences(path, reference) -> list[str]:
    """Dataset paths whose values or layout differ from the reference file ([] when identical)."""
    left, right = datasets_of(path), datasets_of(reference)
    if left.keys() != right.keys():
        return [f"dataset sets differ: {sorted(set(left) ^ set(right))}"]
    found = []
    for name in left:
        same_values = left[name][0].tobytes() == right[name][0].tobytes()
        if not same_values or left[name][1:] != right[name][1:]:
            found.append(name)
    return found
