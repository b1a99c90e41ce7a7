"""``analyze``: stream feature files through the accumulators and compute every metric per layer.

Per file, two passes over the rows serve all selected layers at once
(pass 1: class means; pass 2: the scatter about them, projections on the
between-class span and the NCC / classifier decisions), or each group of
layers in turn when their state does not fit in memory together
(``plan.py``). Everything is validated before the first row is read, so a
bad input fails in seconds, not after an hour. Under torchrun each rank reads
its part of the rows and rank 0 reports (:mod:`nccli.analyze.collectives`).
"""

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from nccli import distributed, schema
from nccli.analyze.collectives import Group, job
from nccli.analyze.config import AnalyzeConfig, check_config
from nccli.analyze.conventions import conventions
from nccli.analyze.kept_classes import KeptClasses, kept_classes
from nccli.analyze.ood import check_ood, ood_columns, ood_means
from nccli.analyze.passes import Scanner
from nccli.analyze.plan import layer_groups, state_budget
from nccli.analyze.references import pair_references, read_reference_means, reference_layers
from nccli.errors import DegenerateMetricWarning, UsageError, warn_caller
from nccli.io.reader import (
    FeatureFileInfo,
    LayerInfo,
    open_feature_file,
    read_info,
)
from nccli.io.rows import RowSource
from nccli.metrics import formulas
from nccli.metrics.backend import Backend, select_backend
from nccli.metrics.classifier import imbalanced
from nccli.metrics.geometry import build_geometry, check_scale
from nccli.metrics.layer import summarize_layer
from nccli.metrics.mse import MSE_MAX_DIM, mse_decomposition
from nccli.metrics.spectra import snr_columns
from nccli.progress import progress_bar
from nccli.report.tables import PairOutput, PairSink, check_pairs_size, class_table
from nccli.types import ClassMeans


@dataclass
class AnalysisResult:
    """Rows of the summary table, the per-class table (one Arrow table per file and layer:
    ``pyarrow.concat_tables(result.classes)``), and the report's metadata."""

    summary: list[dict] = field(default_factory=list)
    classes: list = field(default_factory=list)
    provenance: dict[str, dict] = field(default_factory=dict)
    conventions: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the input leaves out, as `extract` says it (`measure`)
    imbalance: dict[str, tuple[int, int]] = field(default_factory=dict)  # file → (smallest, largest) class count


def analyze_features(
    config: AnalyzeConfig, pairs: PairSink | None = None, group: Group | None = None
) -> AnalysisResult:
    """Compute the metrics of ``docs/metrics.md`` for every selected layer of every file.

    Every input is validated first (opened, checked and closed again); then each file is opened only
    while its rows are read, so any number of files fits under the open-file limit. ``pairs``, if
    given, receives the per-pair table as Arrow record batches while it is computed (never gathered
    here); without ``config.pairs_top`` a table above ``tables.PAIRS_ROWS_MAX`` rows is refused
    before any row is read.

    Under torchrun, every rank calls it: each reads its part of the rows, and only rank 0's result holds
    the tables (the other ranks' are empty; ``pairs`` is called on rank 0 only). ``group``: the job,
    when the caller has joined it already (:func:`analysis_job`); by default it is joined here.
    """
    if group is None and distributed.launch_from_env() is not None:
        with analysis_job(config) as group:
            return analyze_features(config, pairs, group)
    check_config(config, pairs is not None)
    xp = select_backend(config.device if group is None else group.device)
    infos = [read_info(path) for path in config.files]
    selections = [info.select_layers(config.layers) for info in infos]
    references = pair_references(config.means_from, infos, selections) if config.means_from else [None] * len(infos)
    for option, asked in (("--mse", config.mse), ("--snr", config.snr)):
        if asked:
            _check_matrix_width(infos, selections, option)
    ood_info = read_info(config.ood) if config.ood else None
    ood_layers = check_ood(ood_info, infos, selections) if ood_info else ()
    if pairs is not None and config.pairs_top is None:
        most = [min(info.num_classes, config.top_classes or info.num_classes) for info in infos]
        check_pairs_size([classes for classes, layers in zip(most, selections) for _ in layers])
    pair_output = PairOutput(pairs, any(info.class_names is not None for info in infos), config.pairs_top)
    needed = reference_layers(references, selections)
    budget = state_budget(xp) - sum(  # the reference means kept while files use them
        8 * reference.num_classes * layer.dim for reference, layers in needed.values() for layer in layers
    )
    plans = [layer_groups(xp, info, layers, config, budget) for info, layers in zip(infos, selections)]
    reference_plans = {
        path: layer_groups(xp, reference, layers, config, budget) for path, (reference, layers) in needed.items()
    }
    total = sum(2 * info.n_samples * len(groups) for info, groups in zip(infos, plans))
    total += sum(reference.n_samples * len(reference_plans[path]) for path, (reference, _) in needed.items())
    total += ood_info.n_samples if ood_info else 0
    result = AnalysisResult()
    if group is not None:  # every rank has validated its inputs, the same ones: none reads a row otherwise
        group.agree_on_inputs([*infos, *(info for info, _ in needed.values()), *([ood_info] if ood_info else [])])
    with contextlib.ExitStack() as stack:
        advance = stack.enter_context(
            progress_bar(config.show_progress and (group is None or group.main), "analyze", total)
        )
        if group is not None:
            advance = _every_rank(advance, group.world)
        scanner = Scanner(xp, config.block_rows, advance, group)
        ood = ood_means(scanner, ood_info, ood_layers) if ood_info else None
        means: dict[str, dict[str, ClassMeans]] = {}
        for index, (info, layers, groups, reference) in enumerate(zip(infos, selections, plans, references)):
            if reference is not None and reference.path not in means:
                means[reference.path] = read_reference_means(scanner, reference, reference_plans[reference.path])
            with open_feature_file(info.path, probed=True, expected=info) as source:
                reference_means = None if reference is None else means[reference.path]
                analyze_file(xp, scanner, source, layers, reference_means, config, result, groups, pair_output, ood)
            if reference is not None and all(later is not reference for later in references[index + 1 :]):
                del means[reference.path]  # a reference's means are kept only while a later file uses them
    warn_imbalance(result)
    result.conventions = conventions(config, xp.name, result.summary, dict(zip(config.files, references)))
    return result


def analysis_job(config: AnalyzeConfig):
    """Join the torchrun job this process is in, if any (a context yielding its
    :class:`~nccli.analyze.collectives.Group`, else None): ranks compute on ``cuda:LOCAL_RANK`` where CUDA is
    there (``--device auto``/``cuda``)."""
    return job(config.device)


def _every_rank(advance: Callable[[int], None], ranks: int) -> Callable[[int], None]:
    """Rank 0's progress counts for every rank's: the ranks read parts of about the same size."""
    return lambda n: advance(n * ranks)


def _check_matrix_width(infos: list[FeatureFileInfo], selections, option: str) -> None:
    """--mse and --snr need the classifier layer's d × d within-class matrix: refuse above MSE_MAX_DIM."""
    for info, layers in zip(infos, selections):
        name = info.classifier_layer
        for layer in layers:
            if layer.name == name and layer.dim > MSE_MAX_DIM:
                raise UsageError(
                    f"{option} needs a d × d within-class matrix; layer '{name}' of '{info.path}' has d = {layer.dim}, "
                    f"above the limit of {MSE_MAX_DIM}; drop {option} for this file"
                )


def analyze_file(
    xp: Backend,
    scanner: Scanner,
    source: RowSource,
    layers: tuple[LayerInfo, ...],
    reference_means,
    config: AnalyzeConfig,
    result: AnalysisResult,
    groups: list[tuple[LayerInfo, ...]] | None = None,
    pair_output: "PairOutput | None" = None,
    ood: dict[str, np.ndarray] | None = None,
) -> None:
    """One file's passes, its rows appended to ``result``; ``measure_collapse`` runs it on batches in memory.

    ``groups``: ``layers`` cut into groups that fit in memory together (``plan.layer_groups``), two passes
    each; None = one group. ``pair_output``: where the per-pair rows go (default: nowhere; the pair
    summaries are computed all the same). ``ood``: μ_ood per layer name (``--ood``), for
    ``nc5_ood_orthogonality``.
    """
    info = source.info
    pair_output = pair_output or PairOutput(None, info.class_names is not None, None)
    for option, asked, names in (("--mse", config.mse, "mse_*"), ("--snr", config.snr, "snr_*")):
        if asked and source.classifier is None and scanner.main:
            _warn(result, info.path, None, f"no /classifier/weight: {names} reported as null ({option})")
    file_rows, kept = [], None  # the kept classes (--top-classes, --min-count): decided once, for every group
    for group in groups or [layers]:
        rows, kept = _analyze_layers(
            xp, scanner, source, group, reference_means, config, result, pair_output, ood, kept
        )
        file_rows.extend(rows)
    if not scanner.main:
        return  # another rank of a torchrun job: rank 0 reports
    depth = effective_depth(file_rows, config.depth_epsilon)
    for row in file_rows:
        row[schema.COL_EFFECTIVE_DEPTH] = depth
    result.summary.extend(file_rows)
    result.provenance[info.path] = info.provenance


def _analyze_layers(
    xp: Backend,
    scanner: Scanner,
    source: RowSource,
    layers: tuple[LayerInfo, ...],
    reference_means,
    config: AnalyzeConfig,
    result: AnalysisResult,
    pair_output: "PairOutput",
    ood: dict[str, np.ndarray] | None,
    kept: KeptClasses | None,
) -> tuple[list[dict], KeptClasses | None]:
    """Pass 1, geometry, pass 2 and the summaries of ``layers``: their summary rows (none on the ranks
    of a torchrun job other than 0, which only scan their rows), and the file's kept classes (``kept``, or
    decided here from pass 1's counts when the config restricts them; None: every class)."""
    info = source.info
    classifier_layer = info.classifier_layer if source.classifier is not None else None
    moments = scanner.moments(source, layers)
    pass_two_rows = source
    if config.keeps_some_classes:
        if kept is None:

            def decide() -> dict:  # on rank 0, which holds the merged counts (the same in every layer)
                return {"kept": kept_classes(config, next(iter(moments.values())).count, info.path)}

            kept = scanner.shared(decide)["kept"]
        if scanner.main:
            kept.restrict(moments)
        pass_two_rows = kept.rows(source, scanner.advance)

    spectra = {}

    def geometries() -> dict:  # from the merged states: built once, on rank 0 in a torchrun job
        built = {}
        for layer in layers:
            host = moments[layer.name]
            centred = host.class_means().centred
            scale = float(np.abs(centred).max()) * layer.dim**0.5 if centred.size else 0.0  # ≥ every norm
            check_scale(scale, scale, layer.dim)  # before the spectrum squares them
            spectra[layer.name] = formulas.between_class_spectrum(centred)
            ncc_reference = reference_means[layer.name] if reference_means else host.class_means()
            if reference_means and kept is not None:  # the file's own means are over the kept classes already
                ncc_reference = kept.means(ncc_reference, info.path)
            classifier = source.classifier if layer.name == classifier_layer else None
            built[layer.name] = build_geometry(xp, host, spectra[layer.name], ncc_reference, classifier)
        return built

    # the geometries are (K, d) arrays per layer that the summaries no longer need: not kept past pass 2
    matrix_layer = classifier_layer if config.mse or config.snr else None
    decisions = scanner.decisions(pass_two_rows, layers, scanner.shared(geometries), matrix_layer)
    if not scanner.main:
        return [], kept

    file_rows = []
    for layer in layers:
        classifier = source.classifier if layer.name == classifier_layer else None
        layer_pairs = pair_output.layer(info, layer.name)
        metrics = summarize_layer(
            moments[layer.name],
            spectra[layer.name],
            decisions[layer.name],
            classifier,
            lambda message, name=layer.name: _warn(result, info.path, name, message),
            layer_pairs.add if layer_pairs is not None else None,
            config.tile,
        )
        if layer_pairs is not None:
            layer_pairs.close()
        if classifier is not None and imbalanced(metrics.classes["n"]):
            result.imbalance[info.path] = (int(metrics.classes["n"].min()), int(metrics.classes["n"].max()))
        if classifier is not None and config.mse:
            mse = mse_decomposition(moments[layer.name], decisions[layer.name], classifier, config.weight_decay)
            metrics.summary = metrics.summary.with_opt_in(mse)
        if classifier is not None and config.snr:
            warn = partial(_warn, result, info.path, layer.name)
            metrics.summary = metrics.summary.with_opt_in(snr_columns(moments[layer.name], decisions[layer.name], warn))
        if ood is not None:
            metrics.summary = metrics.summary.with_opt_in(
                ood_columns(moments[layer.name].class_means(), ood[layer.name])
            )
        keys = {schema.COL_FILE: info.path, schema.COL_LAYER: layer.name}
        file_rows.append(
            {
                **keys,
                schema.COL_SPLIT: info.split,
                schema.COL_EPOCH: info.epoch,
                schema.COL_MODEL: info.model,
                schema.COL_LAYER_ORDER: layer.order,
                schema.COL_N_SAMPLES: int(moments[layer.name].count.sum()),  # every rank's rows, merged
                schema.COL_N_CLASSES: int(np.count_nonzero(moments[layer.name].count)),
                schema.COL_DIM: layer.dim,
                **metrics.summary,
                "_sigma_b_rank": metrics.sigma_b_rank,
            }
        )
        result.classes.append(class_table(info, layer.name, metrics.classes, pair_output.named))
    return file_rows, kept


def effective_depth(rows: list[dict], epsilon: float) -> int:
    """Smallest layer order with 1 − ncc_accuracy ≤ ε, else the deepest order (Galanti 2022; review §4.2)."""
    ordered = sorted(rows, key=lambda row: row[schema.COL_LAYER_ORDER])
    for row in ordered:
        if 1.0 - row["ncc_accuracy"] <= epsilon + 1e-12:  # tolerance: 1 − 0.99 is not exactly 0.01
            return row[schema.COL_LAYER_ORDER]
    return ordered[-1][schema.COL_LAYER_ORDER]


def warn_imbalance(result: AnalysisResult) -> None:
    """One warning for the whole run when some file's classes are imbalanced (``classifier.imbalanced``):
    margin_normalized's bound 1 assumes balanced classes (``docs/metrics.md``)."""
    if not result.imbalance:
        return
    file, (low, high) = min(result.imbalance.items(), key=lambda item: item[1][0] / item[1][1])
    others = len(result.imbalance) - 1
    where = f"'{file}'" + (f" (and {others} more file{'s' if others > 1 else ''})" if others else "")
    _warn(
        result,
        None,
        None,
        f"class counts differ in {where}: {low} to {high} samples per class; margin_normalized uses n = N/K, "
        "and its bound 1 assumes balanced classes",
    )


def _warn(result: AnalysisResult, file: str | None, layer: str | None, message: str) -> None:
    where = (f"'{file}'" if file else "") + (f": layer '{layer}'" if layer else "")
    text = f"{where}: {message}" if where else message
    result.warnings.append(text)
    warn_caller(DegenerateMetricWarning(text))
