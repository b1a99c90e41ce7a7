"""Running analyze's two passes over a source's rows.

Each block of rows is worked on in pieces (``xp.pieces``; on the CPU one task
of a thread pool each, :mod:`nccli.metrics.threads`) whose states fold into
the layer's state in row order, so the number of threads changes nothing.
Under torchrun (``group``, :mod:`nccli.analyze.collectives`) this process scans
only its rank's rows, and the ranks' states merge exactly (``ClassMoments.merge``,
``Decisions.merge``): the result equals a single pass to rounding. Several
processes on one machine are ``torchrun --nproc-per-node N``, the same path.

Pass 2 must read the rows of pass 1 (in any order): its merged state is checked against pass 1's means
(:func:`~nccli.metrics.accumulators.moved_class`) before anything is summarized. A file can fail it only
if something wrote to it between the passes; batches in memory (``measure_collapse``) if the model or the
loader gave other rows, which its own ``other_rows`` error says.
"""

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

from nccli import schema
from nccli.errors import FeatureFileError, NcCliError
from nccli.io.reader import LayerInfo
from nccli.io.rows import RowSource
from nccli.metrics.accumulators import ClassMoments, Decisions, Moved, moved_class
from nccli.metrics.backend import Backend, backend_of
from nccli.metrics.geometry import Geometry

if TYPE_CHECKING:  # torch, only under torchrun
    from nccli.analyze.collectives import Group


def moments_over(xp, source, layers, block_rows, start, stop, advance) -> dict[str, ClassMoments]:
    """Pass 1 over rows [start, stop) of ``layers``; states on the host."""
    num_classes = source.info.num_classes
    moments = {layer.name: ClassMoments.empty(xp, num_classes, layer.dim) for layer in layers}
    kernels = {name: partial(ClassMoments.of_block, xp) for name in moments}
    _fold_blocks(xp, source, layers, block_rows, start, stop, kernels, moments, advance)
    return {name: state.host() for name, state in moments.items()}


def decisions_over(
    xp, source, layers, block_rows, start, stop, advance, *, geometries, matrix_layer
) -> dict[str, Decisions]:
    """Pass 2 over rows [start, stop) of ``layers`` (with the within-class matrix of ``matrix_layer``); states on
    the host."""
    num_classes = source.info.num_classes
    decisions = {
        layer.name: Decisions.empty(
            xp,
            num_classes,
            geometries[layer.name].rank,
            layer.dim if layer.name == matrix_layer else None,
            dim=layer.dim,
        )
        for layer in layers
    }
    kernels = {
        name: partial(
            Decisions.of_block, xp, geometries[name], num_classes=num_classes, with_matrix=state.within is not None
        )
        for name, state in decisions.items()
    }
    _fold_blocks(xp, source, layers, block_rows, start, stop, kernels, decisions, advance)
    return {name: state.host() for name, state in decisions.items()}


def _fold_blocks(xp, source, layers, block_rows, start, stop, kernels: dict, states: dict, advance) -> None:
    """Fold ``kernels[name](rows, labels)`` of every piece of every block into ``states[name]``, in row
    order. With a pool, it works on one block while the next is read."""
    with xp.piece_pool() as pool:
        pending = None  # the block submitted last: its pieces' states (in order) and its number of rows
        for labels, rows in source.blocks(layers, block_rows, start, stop):
            submitted = (
                {name: _each_piece(xp, pool, block, labels, kernels[name]) for name, block in rows.items()},
                len(labels),
            )
            if pending is not None:
                _fold(pending, states, advance)
            pending = submitted
        if pending is not None:
            _fold(pending, states, advance)


def _fold(submitted, states: dict, advance) -> None:
    pieces, rows = submitted
    for name, piece_states in pieces.items():
        for state in piece_states:
            states[name].fold(state)
    advance(rows)


def _each_piece(xp, pool, block, labels, kernel: Callable):
    """``kernel(rows, labels)`` of each piece of a block (``xp.pieces``), in order: submitted to ``pool`` at
    once if there is one (results come as they are ready), else computed as they are asked for."""
    pieces = xp.pieces(*block.shape)

    def state(piece: slice):
        return kernel(xp.features(block[piece]), xp.labels(labels[piece]))

    return pool.map(state, pieces) if pool is not None else map(state, pieces)


def file_changed(path: str, layer: str, moved: Moved) -> NcCliError:
    """The error of a file whose rows differed between the passes."""
    return FeatureFileError(
        path,
        schema.layer_path(layer),
        f"the second pass over the file gave other rows than the first ({moved}): something wrote to it while "
        "analyze read it; rerun once nothing writes to it",
    )


class Scanner:
    """Runs passes over sources; in a torchrun job (``group``), over this rank's rows, merged with the other
    ranks' states on rank 0.
    ``other_rows(path, layer, moved)``: the error raised when pass 2 did not read the rows of pass 1."""

    def __init__(
        self,
        xp: Backend,
        block_rows: int | None,
        advance: Callable[[int], None],
        group: "Group | None" = None,
        *,
        other_rows: Callable[[str, str, Moved], NcCliError] = file_changed,
    ):
        self.xp, self.block_rows, self.advance, self.group = xp, block_rows, advance, group
        self.other_rows = other_rows
        self.main = group is None or group.main  # the process that holds the merged states and reports

    def moments(self, source: RowSource, layers: tuple[LayerInfo, ...]):
        """Pass-1 states of ``layers`` over every row (None on the ranks other than 0)."""
        return self._run(moments_over, source, layers)

    def decisions(
        self,
        source: RowSource,
        layers: tuple[LayerInfo, ...],
        geometries: dict[str, Geometry],
        matrix_layer: str | None = None,
    ):
        """Pass-2 states of ``layers`` over every row, with the within-class matrix of ``matrix_layer`` (None on
        the ranks other than 0), checked to be over the rows of pass 1."""
        states = self._run(partial(decisions_over, geometries=geometries, matrix_layer=matrix_layer), source, layers)
        if states is not None:
            for layer in layers:
                self._check_same_rows(source, layer.name, states[layer.name], geometries[layer.name])
        return states

    def _check_same_rows(self, source: RowSource, name: str, state: Decisions, geometry: Geometry) -> None:
        """Refuse (``other_rows``) a pass 2 that did not read the rows of pass 1, whose means ``geometry`` holds."""
        host = backend_of(geometry.origin).host
        centres = host(geometry.own_centres)[host(geometry.column_of_class)]  # μ_c − o of every class
        moved = moved_class(state, centres, host(geometry.origin))
        if moved is not None:
            raise self.other_rows(source.info.path, name, moved)

    def shared(self, build: Callable[[], dict]) -> dict:
        """What ``build()`` returns, built once (on rank 0 in a job) and the same on every rank."""
        return build() if self.group is None else self.group.share(build)

    def _run(self, pass_function, source: RowSource, layers):
        block_rows = source.block_rows(layers, self.block_rows)
        start, stop = (0, source.info.n_samples) if self.group is None else self.group.rows(source, block_rows)
        states = pass_function(self.xp, source, layers, block_rows, start, stop, self.advance)
        return states if self.group is None else self.group.reduce(states)
