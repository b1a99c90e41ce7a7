"""``nccli measure``: extract and analyze in one command, with no feature file.

The model runs over the data once per pass (:mod:`nccli.extract.forward`): pass 1 gives the class means,
pass 2 recomputes the forward pass for the scatter and the decisions, and analyze's own per-file function
reads both (:func:`nccli.analyze.measure.measure_rows`), so the numbers are those of ``nccli extract`` then
``nccli analyze`` on the same model and data. A model that does not give the same rows twice (dropout left
on, augmentation, a data order or sample that changes) is refused, not measured.
"""

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from nccli.analyze.analysis import AnalysisResult, AnalyzeConfig
from nccli.analyze.collectives import digest
from nccli.analyze.config import check_config
from nccli.analyze.measure import measure_rows
from nccli.analyze.memory import BatchRows
from nccli.errors import DataError
from nccli.extract.config import ExtractConfig
from nccli.extract.forward import forward_rows
from nccli.metrics.accumulators import Moved
from nccli.report.tables import PairOutput, PairSink, check_pairs_size

if TYPE_CHECKING:
    from nccli.analyze.collectives import Group


@dataclass(frozen=True)
class MeasureConfig:
    """What ``nccli measure`` is asked: MODEL and DATA as ``nccli extract`` takes them (``source``: its
    ``models``, data, model, layer, token and speed options; its output options unused) and the analysis
    options of ``nccli analyze`` that apply to one model's rows."""

    source: ExtractConfig
    means_from: str | None = None
    mse: bool = False
    weight_decay: float = 0.0
    snr: bool = False
    pairs_top: int | None = None
    depth_epsilon: float = 0.01
    top_classes: int | None = None
    min_count: int | None = None

    def analysis(self) -> AnalyzeConfig:
        """The options as analyze's (the report's ``file`` is DATA)."""
        return AnalyzeConfig(
            files=(self.source.data,),
            means_from=self.means_from,
            mse=self.mse,
            weight_decay=self.weight_decay,
            snr=self.snr,
            device=self.source.device,
            depth_epsilon=self.depth_epsilon,
            pairs_top=self.pairs_top,
            top_classes=self.top_classes,
            min_count=self.min_count,
        )


def measure_model(config: MeasureConfig, pairs: PairSink | None = None, group: "Group | None" = None) -> AnalysisResult:
    """The report of MODEL over DATA (:class:`~nccli.analyze.analysis.AnalysisResult`, as analyze's), the
    per-pair table streamed to ``pairs``. In a torchrun job (``group``), each rank runs the model on its GPU over
    its contiguous part of DATA, and rank 0's result holds the report."""
    analysis = config.analysis()
    check_config(analysis, pairs is not None)
    (model,) = config.source.models
    source, part = config.source, None
    if group is not None:  # this rank's device; a progress bar on rank 0 only
        source = replace(source, device=group.device, progress=source.progress and group.main)
        part = (group.rank, group.world)
    rows = forward_rows(model, source, part)
    if group is not None:  # the same model and data on every rank, before any merge
        identity = digest(sorted(rows.provenance.items()), rows.layers, rows.num_classes, rows.epoch)
        group.agree_on([source.data], [identity], "every rank needs the same model and DATA on a shared filesystem")
    if pairs is not None and config.pairs_top is None:
        check_pairs_size([rows.num_classes] * len(rows.layers))
    described = {
        "path": config.source.data,
        "split": str(config.source.split),
        "epoch": rows.epoch,
        "model": rows.model,
        "class_names": rows.class_names,
        "provenance": rows.provenance,
    }
    batches = BatchRows(
        rows.batches, rows.num_classes, source.device, rows.classifier, rows.classifier_layer, described
    )
    pair_output = PairOutput(pairs, rows.class_names is not None, config.pairs_top)
    result = measure_rows(batches, analysis, rows.epoch, other_rows, "--means-from", pair_output, group)
    result.notes.extend(rows.notes)
    return result


def other_rows(path: str, layer: str, moved: Moved) -> DataError:
    """The model gave other rows on its second pass over the data than on its first."""
    return DataError(
        f"the model gave other rows on its second pass over '{path}' than on its first (layer '{layer}', {moved}): "
        "dropout or BatchNorm in training mode, random augmentation, or a data order that changes; measure needs "
        "the same rows twice (extract the features once with `nccli extract` otherwise)"
    )
