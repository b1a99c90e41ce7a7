"""The data that storage and the metrics both speak: a classifier, the class means, and what an array is.

Plain float64 arrays and what describes them; no metric. The feature file's
reader builds a :class:`Classifier`; the passes of ``analyze`` build
:class:`ClassMeans` (``ClassMoments.class_means``) and take them from a
reference file (``--means-from``).
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

import numpy as np

if TYPE_CHECKING:
    import torch

Array: TypeAlias = "np.ndarray | torch.Tensor"
"""What the metrics' states and kernels hold: a numpy array on the CPU, a torch tensor on CUDA."""


@dataclass(frozen=True)
class Classifier:
    """The last linear layer: ``weight`` (C, d) and ``bias`` (C,), float64."""

    weight: np.ndarray
    bias: np.ndarray


@dataclass(frozen=True)
class ClassMeans:
    """Means of the present classes: ``ids`` ascending, ``means`` (K, d)."""

    ids: np.ndarray
    means: np.ndarray

    @property
    def centred(self) -> np.ndarray:
        """M: rows μ_c − μ_G, μ_G the mean of class means."""
        return self.means - self.means.mean(axis=0)

    @property
    def scale(self) -> float:
        """Largest ‖μ_c‖: the size of rounding errors in differences of means."""
        return float(np.linalg.norm(self.means, axis=1).max()) if len(self.ids) else 0.0
