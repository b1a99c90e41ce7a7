"""The plan of `analyze`'s passes: how much memory each layer needs, which layers share a pair of passes, and how
the rows are cut among torchrun ranks (:func:`row_ranges`).

State is O(C·d) per layer (C = the file's ``num_classes``): when the selected
layers do not fit in the budget together, they are cut into groups, each one
more pair of passes over the file; a layer that cannot fit alone is refused
before any row is read (one line, exit 2). The bounds below are upper bounds:
they assume every class present.
"""

import itertools

from nccli import schema
from nccli.analyze.config import AnalyzeConfig
from nccli.errors import FeatureFileError
from nccli.io.reader import BLOCK_BYTES, FeatureFileInfo, LayerInfo, memory_budget
from nccli.metrics.accumulators import ClassMoments, Decisions
from nccli.metrics.backend import Backend
from nccli.metrics.geometry import geometry_bytes


def state_budget(xp: Backend) -> int:
    """Bytes the per-layer state may take: half the memory available (``io.validate.memory_budget``),
    and at most the free memory of a CUDA device, which holds the state there."""
    device = xp.device_memory()
    return memory_budget() if device is None else min(memory_budget(), device)


def layer_bytes(xp: Backend, info: FeatureFileInfo, layer: LayerInfo, config: AnalyzeConfig) -> tuple[int, int]:
    """(resident, working) bytes of one layer, bounds at C = num_classes classes all present.

    Resident while its group of layers is scanned: both passes' states, the
    pass-2 geometry and two stored blocks (the next is read while the pool
    works on one). Working, for one layer at a time:
    building the geometry or summarizing (four (C, d) float64 arrays), one
    block's float64 copies (eight, over its pieces: two of them pass 2's
    residuals sorted by class and their per-class sums) and pass 2's class
    tiles for each piece worked on at once (about five: two float32 screens,
    their masks, float64 products of a quarter of the piece).
    """
    classes, dim = info.num_classes, layer.dim
    classifier = layer.name == info.classifier_layer
    block = 8 * dim * min(config.block_rows or max(1, BLOCK_BYTES // (8 * dim)), max(info.n_samples, 1))
    resident = (
        ClassMoments.state_bytes(classes, dim)
        + Decisions.state_bytes(classes, dim, (config.mse or config.snr) and classifier)
        + geometry_bytes(classes, dim, classifier, shared_ncc=config.means_from is None)
        + 2 * block
    )
    working = 8 * 4 * classes * dim + 8 * block + 5 * xp.tile_bytes * xp.pieces_at_once()
    return resident, working


def layer_groups(
    xp: Backend, info: FeatureFileInfo, layers: tuple[LayerInfo, ...], config: AnalyzeConfig, budget: int
) -> list[tuple[LayerInfo, ...]]:
    """``layers`` cut into consecutive groups whose states fit ``budget`` together: each group is one
    pair of passes over the file. A layer that cannot fit alone is refused here, before any row is read."""
    groups, current, resident_sum, working_max = [], [], 0, 0
    for layer in layers:
        resident, working = layer_bytes(xp, info, layer, config)
        if resident + working > budget:
            raise FeatureFileError(
                info.path,
                schema.layer_path(layer.name),
                f"num_classes = {info.num_classes} at d = {layer.dim} needs {(resident + working) / 2**30:.1f} GiB "
                "for this layer's state (both passes and their tiles), "
                f"above the memory budget of {budget / 2**30:.1f} GiB "
                "(half the memory available, or the free memory of the CUDA device); "
                "run on a machine with more memory, or check the 'num_classes' attribute",
            )
        if current and resident_sum + resident + max(working_max, working) > budget:
            groups.append(tuple(current))
            current, resident_sum, working_max = [], 0, 0
        current.append(layer)
        resident_sum += resident
        working_max = max(working_max, working)
    return groups + [tuple(current)] if current else groups


def row_ranges(rows: int, block_rows: int, parts: int) -> list[tuple[int, int]]:
    """At most ``parts`` consecutive ranges covering [0, rows), cut at multiples of ``block_rows``."""
    blocks = -(-rows // block_rows)
    per_part = max(1, -(-blocks // parts))
    cuts = list(range(0, rows, per_part * block_rows)) + [rows]
    return list(itertools.pairwise(cuts))
