"""The small classifier behind nccli's bundled sample checkpoints.

A multilayer perceptron for the 8×8 scikit-learn digits: the image is
flattened, passed through ``HIDDEN_BLOCKS`` blocks of Linear → BatchNorm1d →
ReLU, and classified by one ``nn.Linear`` with bias. Every block is a named
top-level submodule (``flatten``, ``block1`` … ``block4``, ``classifier``) so
that ``nccli extract`` can hook each one and show collapse layer by layer; the
output of ``block4`` is the classifier's input (the penultimate layer).

Load it in nccli with ``--arch sample_data/digits_mlp.py:digits_mlp``.

Input: float tensors of shape (N, 1, 8, 8), made from the uint8 images in
``digits_{train,test}.npz`` as ``(x / 255 - DIGITS_MEAN) / DIGITS_STD``, which
is what ``nccli extract ... --mean 0.3053 --std 0.3758`` does (no ``--resize``;
the full command line is in ``make_sample_data.py``). The constants are the
pixel mean and standard deviation of the training split, rounded to four
digits (see ``make_sample_data.py``).
"""

from torch import nn

DIGITS_MEAN = 0.3053
"""Pixel mean of the training split after scaling to [0, 1]."""
DIGITS_STD = 0.3758
"""Pixel standard deviation (population) of the training split after scaling to [0, 1]."""

IMAGE_SIZE = 8
IN_CHANNELS = 1
HIDDEN_WIDTH = 64
HIDDEN_BLOCKS = 4


class DigitsMLP(nn.Module):
    """Flatten, ``depth`` × (Linear, BatchNorm1d, ReLU), then a linear classifier with bias."""

    def __init__(self, num_classes: int = 10, width: int = HIDDEN_WIDTH, depth: int = HIDDEN_BLOCKS):
        super().__init__()
        self.flatten = nn.Flatten()
        in_features = IN_CHANNELS * IMAGE_SIZE * IMAGE_SIZE
        for index in range(1, depth + 1):
            block = nn.Sequential(nn.Linear(in_features, width), nn.BatchNorm1d(width), nn.ReLU())
            self.add_module(f"block{index}", block)
            in_features = width
        self.classifier = nn.Linear(in_features, num_classes)

    def forward(self, x):
        # Children run in registration order: flatten, block1..blockN, classifier.
        for module in self.children():
            x = module(x)
        return x


def digits_mlp(num_classes: int = 10) -> nn.Module:
    """Build the sample-data MLP (untrained); load a ``sample_data/checkpoints`` state_dict into it."""
    return DigitsMLP(num_classes)
