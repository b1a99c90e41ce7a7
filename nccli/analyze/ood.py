"""``--ood FILE``: NC5, the orthogonality of the class means to the mean of out-of-distribution features.

Ammar et al. 2024 ("NECO", NC5): at collapse the OOD features' mean becomes
orthogonal to every in-distribution class mean. The OOD file is a feature
file of the same network (same layer names and widths); only its per-layer
mean over all rows is used, from one pass-1 sum over its rows.
"""

import numpy as np

from nccli import schema
from nccli.analyze.passes import Scanner
from nccli.errors import UsageError
from nccli.io.reader import FeatureFileInfo, LayerInfo, open_feature_file
from nccli.types import ClassMeans


def check_ood(ood: FeatureFileInfo, infos: list[FeatureFileInfo], selections) -> tuple[LayerInfo, ...]:
    """The OOD file's layers the analysed files select; refused when one is missing or has another width."""
    widths = {layer.name: layer.dim for layer in ood.layers}
    needed: dict[str, LayerInfo] = {}
    for info, layers in zip(infos, selections):
        for layer in layers:
            if layer.name not in widths:
                raise UsageError(
                    f"--ood file '{ood.path}' has no layer '{layer.name}' (of '{info.path}'); its layers are: "
                    f"{', '.join(widths)}; give an OOD file extracted from the same layers"
                )
            if widths[layer.name] != layer.dim:
                raise UsageError(
                    f"--ood file '{ood.path}': layer '{layer.name}' has d = {widths[layer.name]}, "
                    f"'{info.path}' has d = {layer.dim}; give an OOD file of the same network"
                )
            needed[layer.name] = layer
    return tuple(layer for layer in ood.layers if layer.name in needed)


def ood_means(scanner: Scanner, ood: FeatureFileInfo, layers: tuple[LayerInfo, ...]) -> dict[str, np.ndarray]:
    """μ_ood per layer: the mean of every row of the OOD file, Σ_c n_c μ_c / N from one pass-1 scan."""
    with open_feature_file(ood.path, probed=True, expected=ood) as feature_file:
        moments = scanner.moments(feature_file, layers)
    return {name: (state.count @ state.mean) / max(float(state.count.sum()), 1.0) for name, state in moments.items()}


def ood_orthogonality(means: np.ndarray, ood_mean: np.ndarray) -> float:
    """``nc5_ood_orthogonality = mean_c |cos(μ_c, μ_ood)|`` over present classes, neither centred
    (rhubarbwu/neural-collapse ``orthogonality_deviation``); NaN when μ_ood or some μ_c is 0."""
    norms = np.linalg.norm(means, axis=1) * np.linalg.norm(ood_mean)
    if not len(means) or not (norms > 0).all():
        return np.nan
    return float(np.mean(np.abs(means @ ood_mean) / norms))


def ood_columns(present: ClassMeans, ood_mean: np.ndarray) -> dict[str, float]:
    """The NC5 column of a layer, for ``SummaryRecord.with_opt_in``."""
    return dict(zip(schema.OOD_METRICS, [ood_orthogonality(present.means, ood_mean)]))
