"""``--means-from``: which reference file's class means each analysed file's NCC metrics use.

The reference is one feature file, or a folder or glob of them (the train
split of every checkpoint, for test collapse over training). Each analysed
file is paired with the reference of the same ``epoch`` attribute; among
several of that epoch, or where files carry no epoch, with the reference of
the same file name. What cannot be paired is refused, and so is a pairing that
would silently mix checkpoints or models: a single reference file for a file
of another epoch, or a reference whose ``model`` attribute differs. An
analysed file paired with itself uses its own class means.
"""

import glob
import os

from nccli import schema
from nccli.analyze.passes import Scanner
from nccli.errors import FeatureFileError, UsageError
from nccli.globs import expand_globs, glob_files, is_glob
from nccli.io.reader import FeatureFileInfo, LayerInfo, open_feature_file, read_info
from nccli.types import ClassMeans

FEATURE_FILE_GLOB = "*.h5"


def reference_paths(spec: str) -> tuple[list[str], bool]:
    """The reference files ``spec`` names (a glob as :mod:`nccli.globs` expands it), and whether it named a set
    (a folder or glob) rather than one file."""
    if os.path.isdir(spec):
        found = glob_files(os.path.join(glob.escape(spec), FEATURE_FILE_GLOB))
        if not found:
            raise UsageError(f"--means-from folder '{spec}' holds no {FEATURE_FILE_GLOB} feature files")
        return found, True
    if is_glob(spec):
        return expand_globs([spec], "--means-from pattern"), True
    return [spec], False


def pair_references(
    spec: str, infos: list[FeatureFileInfo], selections: list[tuple[LayerInfo, ...]]
) -> list[FeatureFileInfo | None]:
    """Per analysed file, the validated reference whose class means it uses; None where that is the file itself."""
    paths, is_set = reference_paths(spec)
    references = [read_info(path) for path in paths]
    paired = []
    if not is_set:
        _check_single(spec, references[0], infos)
    for info, layers in zip(infos, selections):
        reference = _pick(spec, info, references) if is_set else references[0]
        if reference.model is not None and info.model is not None and reference.model != info.model:
            raise UsageError(
                f"--means-from '{reference.path}' comes from model '{reference.model}' but '{info.path}' from "
                f"'{info.model}': class means of another model do not apply"
            )
        check_reference(reference, info, layers)
        paired.append(None if _same_file(reference.path, info.path) else reference)
    return paired


def _check_single(spec: str, reference: FeatureFileInfo, infos: list[FeatureFileInfo]) -> None:
    """One reference file serves files of its own epoch (or without one), never several checkpoints silently."""
    folder = os.path.dirname(spec) or "."
    how = (
        f"to pair each file with the reference of its own epoch, pass the folder (--means-from {folder}/) "
        f"or a quoted glob (--means-from '{os.path.join(folder, FEATURE_FILE_GLOB)}')"
    )
    for info in infos:
        if reference.epoch is not None and info.epoch is not None and reference.epoch != info.epoch:
            raise UsageError(
                f"--means-from '{spec}' is from epoch {reference.epoch} but '{info.path}' is from epoch "
                f"{info.epoch}; {how}"
            )
    epochs = sorted({info.epoch for info in infos if info.epoch is not None})
    if reference.epoch is None and len(epochs) > 1:
        raise UsageError(
            f"--means-from '{spec}' has no epoch but the files are from epochs {', '.join(map(str, epochs))}; "
            f"one reference for several checkpoints is refused: {how}"
        )


def _pick(spec: str, info: FeatureFileInfo, references: list[FeatureFileInfo]) -> FeatureFileInfo:
    candidates = references
    if info.epoch is not None and any(reference.epoch is not None for reference in references):
        candidates = [reference for reference in references if reference.epoch == info.epoch]
        if not candidates:
            epochs = sorted({reference.epoch for reference in references if reference.epoch is not None})
            raise UsageError(
                f"--means-from '{spec}' has no reference of epoch {info.epoch} for '{info.path}'; "
                f"its epochs are: {', '.join(map(str, epochs))}"
            )
        if len(candidates) == 1:
            return candidates[0]
    named = [reference for reference in candidates if os.path.basename(reference.path) == os.path.basename(info.path)]
    if len(named) == 1:
        return named[0]
    of_epoch = f" of epoch {info.epoch}" if candidates is not references else ""
    listed = ", ".join(f"'{reference.path}'" for reference in candidates[:4]) + (", …" if len(candidates) > 4 else "")
    raise UsageError(
        f"--means-from '{spec}': no single reference for '{info.path}': {len(candidates)} file(s){of_epoch} "
        f"({listed}), {len(named)} named '{os.path.basename(info.path)}'; pass the reference file itself"
    )


def check_reference(
    reference: FeatureFileInfo, info: FeatureFileInfo, layers: tuple[LayerInfo, ...], option: str = "--means-from"
) -> None:
    """The reference has the analysed file's classes and each of its selected layers, at the same width
    (``option``: how the caller names the reference, ``--means-from`` or ``means_from=``)."""
    available = {layer.name: layer for layer in reference.layers}
    if info.num_classes != reference.num_classes:
        raise FeatureFileError(
            reference.path,
            "",
            f"{option} file has {reference.num_classes} classes but '{info.path}' has {info.num_classes}",
        )
    if reference.class_names is not None and info.class_names is not None:
        differ = [c for c, (a, b) in enumerate(zip(reference.class_names, info.class_names)) if a != b]
        if differ:  # the same K in another order: every NCC decision would be made against the wrong class
            c = differ[0]
            raise FeatureFileError(
                reference.path,
                "",
                f"{option} file names class {c} '{reference.class_names[c]}' but '{info.path}' names it "
                f"'{info.class_names[c]}' ({len(differ)} of {info.num_classes} names differ): a class id must mean the "
                "same class in both files",
            )
    for layer in layers:
        if layer.name not in available:
            raise FeatureFileError(
                reference.path,
                schema.LAYERS,
                f"{option} file has no layer '{layer.name}' (needed by '{info.path}'); "
                f"its layers are: {', '.join(available)}",
            )
        if available[layer.name].dim != layer.dim:
            raise FeatureFileError(
                reference.path,
                schema.layer_path(layer.name),
                f"{option} layer has width {available[layer.name].dim} but '{info.path}' has {layer.dim}",
            )


def _same_file(first: str, second: str) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False


def reference_layers(references, selections) -> dict[str, tuple[FeatureFileInfo, tuple[LayerInfo, ...]]]:
    """Per reference file, its layers that the files paired with it select."""
    names: dict[str, set[str]] = {}
    for reference, layers in zip(references, selections):
        if reference is not None:
            names.setdefault(reference.path, set()).update(layer.name for layer in layers)
    found = {reference.path: reference for reference in references if reference is not None}
    return {
        path: (found[path], tuple(layer for layer in found[path].layers if layer.name in chosen))
        for path, chosen in names.items()
    }


def read_reference_means(
    scanner: Scanner, reference: FeatureFileInfo, groups: list[tuple[LayerInfo, ...]]
) -> dict[str, ClassMeans]:
    """The class means of the layers in ``groups`` in a --means-from file: one pass over its rows per group,
    once per run."""
    means = {}
    with open_feature_file(reference.path, probed=True, expected=reference) as feature_file:
        for layers in groups:
            moments = scanner.moments(feature_file, layers)
            if scanner.main:  # elsewhere rank 0 holds the merged states
                means.update((name, state.class_means()) for name, state in moments.items())
    return means
