"""`nccli analyze`: feature files → the Parquet report of every neural-collapse metric (:func:`nccli.analyze_features`)."""

from typing import Annotated

import typer

from nccli.cli.analyze_options import (
    ClassesOption,
    EpsilonOption,
    MeansFromOption,
    MinCountOption,
    MseOption,
    OodOption,
    PairsOption,
    PairsTopOption,
    SnrOption,
    TopClassesOption,
    WeightDecayOption,
)
from nccli.cli.common import command_line, report_written, split_list, stderr_is_terminal, user_errors


def analyze(
    context: typer.Context,
    files: Annotated[
        list[str],
        typer.Argument(
            help="Feature files (HDF5, as `nccli extract` writes them or any file following the layout), or quoted "
            "globs of them ('test/*.h5'), each expanded in natural order (epoch_2 before epoch_10).",
            show_default=False,
        ),
    ],
    out: Annotated[
        str,
        typer.Option(
            "--out",
            "-o",
            help="The Parquet report to write: one row per (file, layer). Replaced atomically.",
            show_default=False,
        ),
    ],
    layers: Annotated[
        str | None,
        typer.Option(help="Comma-separated layer names or globs to analyze, e.g. 'layer*,fc'. Default: every layer."),
    ] = None,
    means_from: MeansFromOption = None,
    mse: MseOption = False,
    weight_decay: WeightDecayOption = 0.0,
    snr: SnrOption = False,
    ood: OodOption = None,
    top_classes: TopClassesOption = None,
    min_count: MinCountOption = None,
    classes: ClassesOption = None,
    pairs: PairsOption = None,
    pairs_top: PairsTopOption = None,
    device: Annotated[
        str,
        typer.Option(
            help="Where to compute: auto (CUDA if present), cpu, cuda or cuda:N. Accumulation is float64 everywhere."
        ),
    ] = "auto",
    epsilon: EpsilonOption = 0.01,
    block_rows: Annotated[
        int | None,
        typer.Option(
            help="Rows read per block. Default: about 16 MiB of the widest layer, aligned to its HDF5 chunks."
        ),
    ] = None,
) -> None:
    """Compute every neural-collapse metric per layer of each feature file into a Parquet report.

    Files are streamed in row blocks (two passes, float64 state, memory O(K·d) per layer), so files far larger than memory work. Example:

        nccli analyze train.h5 test.h5 --means-from train.h5 --out report.parquet

    Test collapse over training, each test file with the train file of its epoch:

        nccli analyze 'test/*.h5' --means-from train/ --out test.parquet
    """
    with user_errors():
        from nccli.analyze.analysis import AnalyzeConfig
        from nccli.analyze.outputs import write_analysis
        from nccli.globs import expand_globs

        config = AnalyzeConfig(
            files=tuple(expand_globs(files)),
            layers=split_list(layers),
            means_from=means_from,
            mse=mse,
            weight_decay=weight_decay,
            snr=snr,
            ood=ood,
            device=device,
            depth_epsilon=epsilon,
            block_rows=block_rows,
            show_progress=stderr_is_terminal(),  # on rank 0 only, under torchrun
            pairs_top=pairs_top,
            top_classes=top_classes,
            min_count=min_count,
        )
        result = write_analysis(config, out, classes, pairs, command_line(context))
        report_written(result, out)
