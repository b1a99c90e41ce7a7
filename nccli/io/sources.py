"""Where a feature file's objects and bytes come from: the file itself, or virtual-dataset sources that exist.

HDF5 lets a path in one file lead elsewhere, and some of those ways fail
silently. :func:`follow` walks a path link by link: hard links, and soft links
(which stay inside the file) up to :data:`MAX_LINK_HOPS`; external and
user-defined links are refused, since they open other files. :func:`check_storage`
then refuses a dataset whose bytes live in external raw files (which may be
any file on the machine), one whose chunks were never all written (they read
as the fill value; a hostile header could also declare a huge, empty dataset
that takes hours to read), and checks a virtual dataset (VDS): HDF5 reads a
missing or unopenable source file, or a region no mapping covers, as the fill
value without any error. Each source is located the way HDF5 does
(``H5F_prefix_open_file``: an absolute name, else its base name under
``HDF5_VDS_PREFIX``, then beside the VDS file, then the current directory),
must open, hold the dataset (reached by hard and soft links only) and cover
what the mapping reads; the mappings must cover the whole dataset. Sources
may be virtual themselves, up to :data:`MAX_VIRTUAL_DEPTH` levels.
"""

import os
from dataclasses import dataclass, field

import h5py
import numpy as np

from nccli.errors import FeatureFileError

MAX_LINK_HOPS = 16
MAX_VIRTUAL_DEPTH = 4
MAX_VIRTUAL_MAPPINGS = 65536
MAX_BLOCKS = 4096  # hyperslab blocks per mapping, and boxes checked pairwise for overlap
SAME_FILE = "."


def follow(handle: h5py.File, file: str, path: str, hops: int = 0):
    """The object at ``path`` through hard and soft links only; None if a link on the way is missing."""
    node = handle
    parts = [part for part in path.split("/") if part not in ("", ".")]
    for index, part in enumerate(parts):
        if not isinstance(node, h5py.Group):
            return None
        try:
            link = node.get(part, getlink=True)
        except (KeyError, TypeError, ValueError, OSError, RuntimeError) as error:
            raise FeatureFileError(file, path, f"link '{part}' cannot be read: {error}") from None
        here = "/".join(parts[: index + 1])
        if link is None:
            return None
        if isinstance(link, h5py.ExternalLink):
            raise FeatureFileError(
                file,
                here,
                f"is an external link to '{link.path}' in '{link.filename}'; nccli reads only objects "
                "inside the feature file (copy the data in, e.g. with h5copy)",
            )
        if isinstance(link, h5py.SoftLink):
            if hops >= MAX_LINK_HOPS:
                raise FeatureFileError(file, here, f"soft links nest more than {MAX_LINK_HOPS} deep (a cycle?)")
            target = link.path if link.path.startswith("/") else f"{node.name.rstrip('/')}/{link.path}"
            node = follow(handle, file, target, hops + 1)
            if node is None:
                return None
            continue
        if not isinstance(link, h5py.HardLink):
            raise FeatureFileError(file, here, f"is a link of an unsupported kind ({type(link).__name__})")
        try:
            node = node[part]
        except (KeyError, ValueError, OSError, RuntimeError) as error:
            raise FeatureFileError(file, here, f"cannot be opened: {error}") from None
    return node


def check_storage(dataset: h5py.Dataset, file: str, path: str, depth: int = 0) -> None:
    """Refuse external raw storage, unwritten chunks, and virtual datasets whose sources do not hold every row."""
    if dataset.external:
        names = ", ".join(sorted({str(name) for name, *_ in dataset.external}))
        raise FeatureFileError(
            file, path, f"keeps its bytes in external files ({names}); nccli reads only data stored in the feature file"
        )
    if dataset.is_virtual:
        _check_virtual(dataset, file, path, depth)
        return
    declared = int(np.prod(dataset.shape, dtype=np.int64)) if dataset.shape else 1
    if declared == 0:
        return
    if dataset.chunks:
        expected = int(
            np.prod([-(-size // chunk) for size, chunk in zip(dataset.shape, dataset.chunks)], dtype=np.int64)
        )
        stored = dataset.id.get_num_chunks()
        if stored < expected:
            raise FeatureFileError(
                file,
                path,
                f"stores only {stored} of its {expected} chunks: the rest were never written "
                "(an incomplete or damaged file)",
            )
    elif dataset.id.get_storage_size() == 0 and dataset.id.get_create_plist().get_layout() == h5py.h5d.CONTIGUOUS:
        raise FeatureFileError(file, path, "its data was never written (an incomplete or damaged file)")


@dataclass
class _Box:
    """An n-d block of elements, ends exclusive."""

    start: tuple[int, ...]
    stop: tuple[int, ...]

    @property
    def volume(self) -> int:
        return int(np.prod([b - a for a, b in zip(self.start, self.stop)], dtype=np.int64))

    def overlaps(self, other: "_Box") -> bool:
        return all(a < d and c < b for a, b, c, d in zip(self.start, self.stop, other.start, other.stop))


@dataclass
class _Sources:
    """Source files opened while checking one virtual dataset, by resolved path."""

    vds_file: str
    opened: dict = field(default_factory=dict)

    def open(self, name: str) -> tuple[str, h5py.File] | None:
        """The file HDF5 would open for source ``name`` (the first candidate that opens), opened once."""
        for candidate in source_candidates(name, self.vds_file):
            if not os.path.isfile(candidate):
                continue
            resolved = os.path.realpath(candidate)
            if resolved not in self.opened:
                try:
                    self.opened[resolved] = h5py.File(candidate, "r")
                except OSError:
                    continue
            return resolved, self.opened[resolved]
        return None

    def close(self) -> None:
        for handle in self.opened.values():
            handle.close()


def _check_virtual(dataset: h5py.Dataset, file: str, path: str, depth: int) -> None:
    if depth >= MAX_VIRTUAL_DEPTH:
        raise FeatureFileError(
            file, path, f"virtual dataset sources nest more than {MAX_VIRTUAL_DEPTH} deep (a cycle?)"
        )
    try:
        mappings = dataset.virtual_sources()
    except (OSError, RuntimeError, ValueError) as error:
        raise FeatureFileError(file, path, f"its virtual dataset mappings cannot be read: {error}") from None
    if len(mappings) > MAX_VIRTUAL_MAPPINGS:
        raise FeatureFileError(
            file, path, f"has {len(mappings)} virtual dataset mappings (limit {MAX_VIRTUAL_MAPPINGS})"
        )
    sources = _Sources(file)
    try:
        boxes = []
        for mapping in mappings:
            mapped = _boxes(mapping.vspace, dataset.shape, file, path, "a virtual dataset mapping")
            boxes += mapped
            _check_source(mapping, sum(box.volume for box in mapped), dataset, file, path, depth, sources)
        _check_covered(boxes, dataset.shape, file, path)
    finally:
        sources.close()


def _check_source(mapping, mapped: int, dataset, file: str, path: str, depth: int, sources: _Sources) -> None:
    name, dset_name = mapping.file_name, mapping.dset_name
    where = f"virtual dataset source '{dset_name}' in '{name}'"
    if "%" in name.replace("%%", "") or "%" in dset_name.replace("%%", ""):
        raise FeatureFileError(file, path, f"{where}: printf-style (unlimited) source names are not supported")
    if name == SAME_FILE:
        handle, source_file = dataset.file, file
    else:
        found = sources.open(name.replace("%%", "%"))
        if found is None:
            raise FeatureFileError(
                file,
                path,
                f"{where}: the file is missing or cannot be opened (looked for it as HDF5 does: "
                f"{', '.join(source_candidates(name, file))}); HDF5 would read its rows as fill values",
            )
        source_file, handle = found
    source = follow(handle, source_file, dset_name.replace("%%", "%"))
    if not isinstance(source, h5py.Dataset):
        raise FeatureFileError(file, path, f"{where}: no such dataset in '{source_file}'; HDF5 would read fill values")
    whole = mapping.src_space.get_select_type() == h5py.h5s.SEL_ALL
    selection = _boxes(mapping.src_space, source.shape, file, path, f"{where}: the mapping", whole)
    if sum(box.volume for box in selection) != mapped:
        raise FeatureFileError(
            file,
            path,
            f"{where}: the source has shape {source.shape}, which does not hold the {mapped} elements mapped from it",
        )
    try:
        check_storage(source, source_file, source.name, depth + 1)
    except FeatureFileError as error:
        raise FeatureFileError(file, path, f"{where}: {error}") from None


def _boxes(space, shape: tuple[int, ...], file: str, path: str, what: str, whole: bool = False) -> list[_Box]:
    """The blocks a selection picks in a dataset of ``shape``; refused when they leave it."""
    kind = space.get_select_type()
    if kind == h5py.h5s.SEL_ALL or whole:
        return [_Box(tuple(0 for _ in shape), tuple(shape))]
    if kind == h5py.h5s.SEL_NONE:
        return []
    if kind != h5py.h5s.SEL_HYPERSLABS:
        raise FeatureFileError(file, path, f"{what} selects single points; only blocks are supported")
    if space.is_regular_hyperslab() and h5py.h5s.UNLIMITED in space.get_regular_hyperslab()[2]:
        raise FeatureFileError(file, path, f"{what} is unlimited; only fixed mappings are supported")
    if space.get_select_hyper_nblocks() > MAX_BLOCKS:
        raise FeatureFileError(file, path, f"{what} has more than {MAX_BLOCKS} blocks")
    boxes = [
        _Box(tuple(int(a) for a in low), tuple(int(b) + 1 for b in high))
        for low, high in space.get_select_hyper_blocklist()
    ]
    for box in boxes:
        if len(box.stop) != len(shape) or any(b > size for b, size in zip(box.stop, shape)):
            raise FeatureFileError(file, path, f"{what} reaches past the shape {shape}; HDF5 would read fill values")
    return boxes


def _check_covered(boxes: list[_Box], shape: tuple[int, ...], file: str, path: str) -> None:
    """The mapped blocks must tile the dataset: what no mapping covers reads as the fill value."""
    total = int(np.prod(shape, dtype=np.int64))
    if len(boxes) > MAX_BLOCKS:
        raise FeatureFileError(file, path, f"has more than {MAX_BLOCKS} virtual dataset blocks to check")
    boxes = sorted(boxes, key=lambda box: box.start)
    overlapping = False
    for index, box in enumerate(boxes):
        for later in boxes[index + 1 :]:
            if later.start[0] >= box.stop[0]:  # sorted by start: no later box reaches back into this one
                break
            overlapping = overlapping or box.overlaps(later)
    covered = sum(box.volume for box in boxes)
    if overlapping or covered != total:
        raise FeatureFileError(
            file,
            path,
            f"its virtual dataset mappings cover {covered} of its {total} elements"
            + (" (some twice)" if overlapping else "")
            + "; the rest would read as fill values",
        )


def source_candidates(name: str, vds_file: str) -> list[str]:
    """Where HDF5 looks for a VDS source file, in order (``H5F_prefix_open_file``, no dataset-access prefix)."""
    candidates, tail = [], name
    if os.path.isabs(name):
        candidates.append(name)
        tail = os.path.basename(name)
    for prefix in filter(None, os.environ.get("HDF5_VDS_PREFIX", "").split(os.pathsep)):
        if prefix.startswith("${ORIGIN}"):
            prefix = os.path.dirname(os.path.abspath(vds_file)) + prefix[len("${ORIGIN}") :]
        candidates.append(os.path.join(prefix, tail))
    candidates.append(os.path.join(os.path.dirname(os.path.abspath(vds_file)), tail))
    candidates.append(tail)
    candidates.append(os.path.join(os.path.dirname(os.path.realpath(vds_file)), tail))
    return list(dict.fromkeys(candidates))


def locate_source(name: str, vds_file: str) -> str | None:
    """The file HDF5 would open for a VDS source name: the first candidate that opens as HDF5, else None."""
    sources = _Sources(vds_file)
    try:
        found = sources.open(name)
    finally:
        sources.close()
    return None if found is None else found[0]
