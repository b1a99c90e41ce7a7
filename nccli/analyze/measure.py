"""``measure_collapse``: the metrics of ``analyze`` on batches in hand, without writing a file.

Inside an evaluation loop the features already exist as tensors; writing them
to HDF5 just to read them back costs a disk round trip and a second tool.
:func:`measure_collapse` wraps the batches in a
:class:`~nccli.analyze.memory.BatchRows` and runs analyze's own per-file function
(:func:`nccli.analyze.analysis.analyze_file`): the same two passes, the same
accumulators, the same formulas, so its numbers equal ``analyze`` on the same
rows written to a file (to rounding: the blocks differ).

The batches are read twice, and pass 2 must give the rows of pass 1, in any
order: a model left in training mode (dropout, BatchNorm's batch statistics),
random augmentation or a sampler that draws other samples would be measured
against the means of other rows. Pass 2's per-class sums of the residuals about
pass 1's means, n_c·(μ_c of pass 2 − μ_c of pass 1), show it
(:func:`~nccli.metrics.accumulators.moved_class`); :func:`other_rows` refuses.
"""

import numbers
from collections.abc import Callable
from typing import TYPE_CHECKING

from nccli import schema
from nccli.analyze.analysis import AnalysisResult, AnalyzeConfig, analyze_file, warn_imbalance
from nccli.analyze.conventions import conventions
from nccli.analyze.memory import BatchRows
from nccli.analyze.passes import Scanner
from nccli.analyze.plan import layer_groups, state_budget
from nccli.analyze.references import check_reference, read_reference_means
from nccli.errors import DataError, UsageError
from nccli.io.reader import read_info
from nccli.metrics.accumulators import Moved
from nccli.report.tables import PairOutput
from nccli.types import ClassMeans

if TYPE_CHECKING:  # torch, only under torchrun
    from nccli.analyze.collectives import Group


def measure_collapse(
    batches,
    *,
    num_classes: int,
    classifier=None,
    classifier_layer: str | None = None,
    means_from: str | None = None,
    epoch: int | None = None,
    split: str = schema.DEFAULT_SPLIT,
    device: str = "auto",
    top_classes: int | None = None,
    min_count: int | None = None,
) -> list[dict]:
    """Neural-collapse metrics of every layer of ``batches``: one dict per layer, keyed by the report's columns.

    ``batches``: ``(features, labels)`` pairs, read twice (two passes), so a list, a DataLoader, or a
    zero-argument function returning a new iterator each call (a plain generator is refused).
    ``features``: a (B, d) float tensor or array (one layer, named ``(features)``: bracketed like the rows'
    ``file`` ``(batches)``, it matches no layer of a feature file, such as VGG's ``features``), or a dict
    ``{layer: (B, d)}``, the same layers in every batch, in forward order; ``labels``: (B,) integers in
    ``[0, num_classes)``.
    Tensors may be on a CUDA device. Every batch is checked as analyze checks a file (shapes, label range,
    NaN/Inf), and the second pass must give the same rows as the first, in any order (a shuffling
    DataLoader is fine, and so is the rounding of a model run in other batches; dropout or BatchNorm in
    training mode, random augmentation or sampling are refused with a DataError).

    ``classifier``: ``(W, b)``, W (num_classes, d), b (num_classes,) or None; it applies to
    ``classifier_layer``, by default the only layer of width d. ``means_from``: a feature file (usually of
    the train split) whose class means the nearest-class-centre metrics use, as ``analyze --means-from``.
    ``epoch`` (an integer ≥ 0, or None) and ``split`` (default ``train``, as in a feature file without them)
    fill the rows' ``epoch`` and ``split``, so that the rows of several checkpoints make one report; a
    ``means_from`` file of another epoch is refused.
    ``top_classes`` N, ``min_count`` M: only the N classes with the most rows, or those with at least M rows, or
    those meeting both, as ``analyze --top-classes/--min-count`` (the other classes' rows left out).
    ``device``: ``auto`` computes on the device of CUDA tensors (else as analyze: CUDA if present), ``cpu``
    with numpy, ``cuda``/``cuda:N`` with torch; state is float64 everywhere.

    The rows convert to a table with ``pandas.DataFrame(rows)``; ``file`` is ``(batches)``.
    """
    if not _integer_from(num_classes, 1):
        raise UsageError(f"num_classes must be a positive integer, got {num_classes!r}")
    if epoch is not None and not _integer_from(epoch, 0):
        raise UsageError(f"epoch must be an integer ≥ 0 or None, got {epoch!r}")
    if not isinstance(split, str) or not split:
        raise UsageError(f"split must be a non-empty string such as 'train' or 'test', got {split!r}")
    for name, value in (("top_classes", top_classes), ("min_count", min_count)):
        if value is not None and not _integer_from(value, 1):
            raise UsageError(f"{name} must be a positive integer or None, got {value!r}")
    epoch = None if epoch is None else int(epoch)
    described = {"split": split, "epoch": epoch}
    rows = BatchRows(batches, int(num_classes), device, classifier, classifier_layer, described)
    config = AnalyzeConfig(
        files=(rows.info.path,), means_from=means_from, device=device, top_classes=top_classes, min_count=min_count
    )
    result = measure_rows(rows, config, epoch, other_rows, "means_from=")
    return [{column: row[column] for column in schema.SUMMARY_COLUMNS} for row in result.summary]


def _integer_from(value, lowest: int) -> bool:
    """Whether ``value`` is an integer (not a bool) ≥ ``lowest``."""
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) and value >= lowest


def measure_rows(
    rows: BatchRows,
    config: AnalyzeConfig,
    epoch: int | None,
    refusal: Callable[[str, str, Moved], DataError],
    means_option: str,
    pair_output: PairOutput | None = None,
    group: "Group | None" = None,
) -> AnalysisResult:
    """analyze's passes over batches in memory (``config.means_from``, ``mse``, ``snr`` as analyze takes them);
    ``refusal`` is the error of a second pass with other rows, ``means_option`` how the caller names the
    reference; ``group``: the torchrun job whose ranks each hold their own part of the rows (``nccli measure``)."""
    scanner = Scanner(rows.xp, None, lambda n: None, group, other_rows=refusal)
    result = AnalysisResult()
    layers = rows.info.layers
    groups = layer_groups(rows.xp, rows.info, layers, config, state_budget(rows.xp))  # analyze's memory plan
    reference_means = (
        _reference_means(scanner, config.means_from, rows, epoch, means_option) if config.means_from else None
    )
    analyze_file(rows.xp, scanner, rows, layers, reference_means, config, result, groups, pair_output)
    warn_imbalance(result)
    result.conventions = conventions(config, rows.xp.name, result.summary, {rows.info.path: config.means_from})
    return result


def other_rows(path: str, layer: str, moved: Moved) -> DataError:
    """The error of batches whose second pass gave other rows than the first, naming the usual causes."""
    return DataError(
        f"the second pass over the batches gave other rows than the first (layer '{layer}', {moved}): "
        "dropout or BatchNorm left in training mode (call model.eval()), random augmentation, or a sampler "
        "that draws other samples; measure_collapse needs the same rows twice"
    )


def _reference_means(
    scanner: Scanner, path: str, rows: BatchRows, epoch: int | None, option: str
) -> dict[str, ClassMeans]:
    """Class means of the layers of ``rows`` in the feature file ``path`` (pass 1 over it), checked as analyze
    checks a --means-from file: of the same epoch, when both have one (``option``: how the caller names it)."""
    info = read_info(path)
    if epoch is not None and info.epoch not in (None, epoch):
        given = f"{option}'{path}'" if option.endswith("=") else f"{option} '{path}'"
        raise UsageError(
            f"{given} is from epoch {info.epoch} but the rows from epoch {epoch}: the class means "
            f"of another checkpoint do not apply; pass the feature file of epoch {epoch}"
        )
    check_reference(info, rows.info, rows.info.layers, option=option)
    return read_reference_means(scanner, info, [tuple(info.layer(layer.name) for layer in rows.info.layers)])
