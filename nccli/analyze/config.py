"""What ``nccli analyze`` is asked to do (:class:`AnalyzeConfig`, built by the command line or by a
caller of :func:`nccli.analyze_features`), and the checks of its options that need no file."""

import math
from dataclasses import dataclass

from nccli.errors import UsageError


@dataclass(frozen=True)
class AnalyzeConfig:
    """What to analyze and how.

    ``layers``: names or globs (None = all); ``means_from``: a reference
    feature file whose class means the nearest-class-centre metrics use, or a
    folder or glob of them, paired with each file by epoch, else file name
    (:mod:`nccli.analyze.references`);
    ``mse``: add the MSE decomposition with weight decay ``weight_decay``;
    ``snr``: add the SNR spectrum (both need the d × d within-class matrix of
    the classifier layer); ``ood``: a feature file of out-of-distribution
    inputs through the same network, for ``nc5_ood_orthogonality``;
    ``depth_epsilon``: ε of ``ncc_effective_depth``; ``block_rows``: rows per
    block (None = about 16 MiB of the widest layer, chunk-aligned); ``pairs_top``:
    per layer, send only the N pairs with the largest cdnv to the pair sink;
    ``tile``: classes per side of the pair tiles (None = from
    ``tiles.TILE_BYTES``); ``top_classes`` N and ``min_count`` M: analyze
    only the N classes with the most rows in each file, or those with at least
    M rows, or those meeting both (None: every class;
    :mod:`nccli.analyze.kept_classes`).
    """

    files: tuple[str, ...]
    layers: tuple[str, ...] | None = None
    means_from: str | None = None
    mse: bool = False
    weight_decay: float = 0.0
    snr: bool = False
    ood: str | None = None
    device: str = "auto"
    depth_epsilon: float = 0.01
    block_rows: int | None = None
    show_progress: bool = False
    pairs_top: int | None = None
    tile: int | None = None
    top_classes: int | None = None
    min_count: int | None = None

    @property
    def keeps_some_classes(self) -> bool:
        """Whether ``top_classes`` or ``min_count`` restricts the classes analysed."""
        return self.top_classes is not None or self.min_count is not None


def check_config(config: AnalyzeConfig, with_pairs: bool) -> None:
    """Refuse a bad option in one line, before any file is opened (``with_pairs``: a pair table is wanted)."""
    if not config.files:
        raise UsageError("no feature files given")
    if config.pairs_top is not None and not with_pairs:
        raise UsageError("--pairs-top selects rows of the per-pair table; add --pairs FILE")
    if config.pairs_top is not None and config.pairs_top < 1:
        raise UsageError(f"--pairs-top must be ≥ 1, got {config.pairs_top}")
    if config.tile is not None and config.tile < 1:
        raise UsageError(f"tile must be ≥ 1, got {config.tile}")
    if not config.weight_decay >= 0 or math.isinf(config.weight_decay):  # NaN fails the first test
        raise UsageError(f"--weight-decay must be a finite number ≥ 0, got {config.weight_decay}")
    if config.weight_decay and not config.mse:
        raise UsageError("--weight-decay only applies to the MSE decomposition; add --mse")
    if not 0 <= config.depth_epsilon <= 1:  # NaN too
        raise UsageError(f"--epsilon must be in [0, 1], got {config.depth_epsilon}")
    if config.block_rows is not None and config.block_rows < 1:
        raise UsageError(f"--block-rows must be ≥ 1, got {config.block_rows}")
    for option, value in (("--top-classes", config.top_classes), ("--min-count", config.min_count)):
        if value is not None and value < 1:
            raise UsageError(f"{option} must be ≥ 1, got {value}")
