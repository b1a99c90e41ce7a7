"""The ``nccli`` command line: a thin typer layer over the library.

Each command parses its options, builds a frozen config, calls one library
function and prints the outcome. Heavy imports (torch, h5py, pyarrow) happen
inside the commands so that ``nccli --help`` is instant. Errors the user can
fix (:class:`nccli.errors.NcCliError`) become one line on stderr and exit
code 2; anything else is a bug and keeps its traceback.
"""

import contextlib
import enum
import sys
import warnings
from pathlib import Path
from typing import Annotated, Iterator

import typer

from nccli import __version__, schema
from nccli.errors import DegenerateMetricWarning, NcCliError, UsageError
from nccli.extract.config import (  # torch-free: the choices of extract
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_DIM,
    DEFAULT_ROOT,
    DEFAULT_WORKERS,
    Compression,
    MapPooling,
    Precision,
    Split,
    StorageDtype,
    TokenPooling,
)
from nccli.report.formats import ReportFormat

app = typer.Typer(
    name="nccli",
    help="Measure neural collapse in deep classifiers: `extract` per-layer features "
    "to HDF5, `analyze` them into a Parquet report, `report` it as a table.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _stderr(message: str) -> None:
    typer.echo(message, err=True)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Print nccli's own warnings as one plain line; others the usual way."""
    if issubclass(category, DegenerateMetricWarning):
        _stderr(f"warning: {message}")
    else:
        _stderr(warnings.formatwarning(message, category, filename, lineno, line).rstrip())


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """The error boundary of every command: NcCliError → one line, exit 2; Ctrl-C → exit 130."""
    previous = warnings.showwarning
    warnings.showwarning = _show_warning
    try:
        yield
    except NcCliError as error:
        if getattr(error, "echo", True):  # under torchrun, rank 0 prints the job's error once
            _stderr(f"error: {error}")
        raise typer.Exit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:
        _stderr("interrupted")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    finally:
        warnings.showwarning = previous


def command_line(context: typer.Context) -> str:
    """The command as the user typed it, for provenance; rebuilt from the parsed options under another host
    (tests, notebooks), where ``sys.argv`` is the host's."""
    import shlex

    program = Path(sys.argv[0])
    if program.name == "nccli" or program.parent.name == "nccli":  # the console script, or python -m nccli
        return shlex.join(["nccli", *sys.argv[1:]])
    options = []
    for name, value in context.params.items():
        if value in (None, False, ()) or value == []:
            continue
        flag = "--" + name.replace("_", "-")
        values = value if isinstance(value, (list, tuple)) else [value]
        options += [flag] if value is True else [item for v in values for item in (flag, str(v))]
    return shlex.join(["nccli", context.info_name, *options])


def stderr_is_terminal() -> bool:
    """Progress bars and tables for people appear only on a terminal."""
    return sys.stderr.isatty()


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"nccli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Measure neural collapse in deep classifiers."""


class PlotFormat(enum.StrEnum):
    """Image formats of ``nccli plot``."""

    PNG = "png"
    SVG = "svg"
    PDF = "pdf"


class PlotKind(enum.StrEnum):
    """Figure kinds of ``nccli plot``."""

    ALL = "all"
    EPOCHS = "epochs"
    DEPTH = "depth"


@app.command()
def plot(
    report: Annotated[
        str, typer.Argument(help="The Parquet report written by `nccli analyze`.", show_default=False)
    ],
    out: Annotated[
        str,
        typer.Option(
            "--out",
            "-o",
            help="Directory to write the figures into. It is created if missing; figures of the same name are replaced.",
            show_default=False,
        ),
    ],
    metrics: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated metric columns of the report to draw, one panel each (accuracies are drawn as "
            "errors in one panel). By default the Papyan et al. panel over epochs and the variability and "
            "class-mean geometry metrics through depth.",
        ),
    ] = None,
    fmt: Annotated[PlotFormat, typer.Option("--format", "-f", help="Image format of the figures.")] = PlotFormat.PNG,
    layer: Annotated[
        str | None,
        typer.Option(
            help="Layer to follow over epochs. By default each file's classifier-input layer, the rows that have "
            "a classifier accuracy.",
        ),
    ] = None,
    kind: Annotated[
        PlotKind,
        typer.Option(
            help="Which figures to draw: metrics over epochs at one layer, depthwise profiles (one figure per "
            "split), or all of them.",
        ),
    ] = PlotKind.ALL,
) -> None:
    """Draw neural-collapse figures from a report: metrics over epochs and through depth (needs matplotlib)."""
    with user_errors():
        from nccli.report.plots import plot_report

        chosen = None if metrics is None else metrics.split(",")
        for path in plot_report(report, out, metrics=chosen, fmt=fmt.value, layer=layer, kind=kind.value):
            typer.echo(str(path))


_MODEL_PANEL = "Model"
_DATA_PANEL = "Data"
_LAYERS_PANEL = "Layers"
_SPEED_PANEL = "Speed"
_OUTPUT_PANEL = "Output file"

ArchOption = Annotated[
    str | None,
    typer.Option(
        help="The network a state_dict checkpoint fits: a torchvision model name (resnet18), "
        "module.path:callable, or path/to/file.py:callable. The callable gets num_classes=K when --num-classes "
        "is given.",
        rich_help_panel=_MODEL_PANEL,
        show_default=False,
    ),
]
WeightsOption = Annotated[
    str | None,
    typer.Option(
        help="Torchvision weights for a torchvision MODEL name, e.g. IMAGENET1K_V1 or DEFAULT, read from the "
        "torch hub cache (downloaded when online). Their own preprocessing replaces --resize/--mean/--std.",
        rich_help_panel=_MODEL_PANEL,
        show_default=False,
    ),
]
NumClassesOption = Annotated[
    int | None,
    typer.Option(
        help="Number of classifier outputs to build the model with. By default the torchvision default, or "
        "for --arch NAME the width of the checkpoint's last linear layer.",
        rich_help_panel=_MODEL_PANEL,
        show_default=False,
    ),
]
TrustOption = Annotated[
    bool,
    typer.Option(
        help="Allow checkpoints that hold pickled Python objects (a whole nn.Module) and torch.export programs "
        "(.pt2), which torch unpickles in part. Unpickling can run arbitrary code: use only for files you trust. "
        "Without it only tensors are loaded (and, under torch < 2.10, whose weights_only mode has known bypasses, "
        "only .safetensors).",
        rich_help_panel=_MODEL_PANEL,
    ),
]


def _numbers(option: str, text: str | None, kind: type = float) -> tuple | None:
    """``"0.5,0.2"`` → ``(0.5, 0.2)``; a one-line error naming the option otherwise."""
    if text is None:
        return None
    try:
        return tuple(kind(part) for part in text.split(","))
    except ValueError:
        noun = "integers" if kind is int else "numbers"
        raise UsageError(f"{option} takes comma-separated {noun}, got '{text}'") from None


@app.command(
    help="Run MODEL over DATA and write per-layer features, labels, logits and the classifier to an HDF5 file."
    "\n\nThe file is written as FILE.h5.partial and renamed when complete; after Ctrl-C or a crash, rerun the "
    "same command with --resume. Read the file with `nccli analyze FILE.h5`; `nccli layers MODEL` lists the "
    "layers --layers can pick."
)
def extract(
    context: typer.Context,
    models: Annotated[
        list[str],
        typer.Argument(
            metavar="MODEL",
            help="A torchvision model name (resnet18, vit_b_16, ...), or checkpoint files: a state_dict "
            "(.pt, .pth, .safetensors; with --arch), a torch.export program (.pt2), or a pickled nn.Module "
            "(both with --trust-checkpoint). Several checkpoints or a quoted glob ('ckpt/epoch_*.pt') write one "
            "file each into the --out directory.",
            show_default=False,
        ),
    ],
    data: Annotated[
        str,
        typer.Argument(
            metavar="DATA",
            help="cifar10, cifar100, mnist, fashionmnist, svhn, stl10 or imagenet (under --root); an image "
            "folder (one subfolder per class); a .npz with x (images) and y (integer labels); an .h5 with "
            "/images and /labels; or fake:N for N random 3×32×32 images in 10 classes.",
            show_default=False,
        ),
    ],
    out: Annotated[
        str,
        typer.Option(
            "--out",
            "-o",
            help="The feature file to write (FILE.h5). A directory (created if missing) when MODEL names several "
            "checkpoints, when it ends with '/', or when it is an existing directory: one CHECKPOINT_NAME.h5 each.",
            rich_help_panel=_OUTPUT_PANEL,
            show_default=False,
        ),
    ],
    arch: ArchOption = None,
    weights: WeightsOption = None,
    num_classes: NumClassesOption = None,
    trust_checkpoint: TrustOption = False,
    init_seed: Annotated[
        int,
        typer.Option(
            help="Seed of the random initialisation of a torchvision MODEL built without --weights (recorded in "
            "the file), so the same command, --resume and every torchrun process build the same network.",
            rich_help_panel=_MODEL_PANEL,
        ),
    ] = 0,
    epoch: Annotated[
        int | None,
        typer.Option(
            help="Epoch (or step) to record for a single checkpoint. By default the checkpoint's own 'epoch' "
            "entry, else the number in its file name (epoch_012.pt → 12).",
            rich_help_panel=_MODEL_PANEL,
            show_default=False,
        ),
    ] = None,
    root: Annotated[
        str, typer.Option(help="Directory holding the named torchvision datasets.", rich_help_panel=_DATA_PANEL)
    ] = DEFAULT_ROOT,
    split: Annotated[
        Split,
        typer.Option(
            help="Split of a named dataset to read (imagenet: test reads val); recorded in the file for any DATA.",
            rich_help_panel=_DATA_PANEL,
        ),
    ] = Split.TRAIN,
    download: Annotated[
        bool,
        typer.Option(help="Download a named dataset into --root if it is not there.", rich_help_panel=_DATA_PANEL),
    ] = False,
    resize: Annotated[
        int | None,
        typer.Option(
            help="Resize the shorter side to N and centre-crop N×N. By default images keep their size (they must "
            "then all have the same size).",
            rich_help_panel=_DATA_PANEL,
            show_default=False,
        ),
    ] = None,
    mean: Annotated[
        str | None,
        typer.Option(
            help="Per-channel mean to subtract after scaling pixels to [0, 1]: one number or three, comma-separated. "
            "Default: ImageNet's 0.485,0.456,0.406 (their average for 1-channel images).",
            rich_help_panel=_DATA_PANEL,
            show_default=False,
        ),
    ] = None,
    std: Annotated[
        str | None,
        typer.Option(
            help="Per-channel standard deviation to divide by: one number or three. Default: ImageNet's "
            "0.229,0.224,0.225 (their average for 1-channel images).",
            rich_help_panel=_DATA_PANEL,
            show_default=False,
        ),
    ] = None,
    channels: Annotated[
        int | None,
        typer.Option(
            help="Convert images to 1 (grey) or 3 (RGB) channels, e.g. --channels 3 to feed MNIST to a torchvision "
            "model. By default images keep their channels.",
            rich_help_panel=_DATA_PANEL,
            show_default=False,
        ),
    ] = None,
    per_class: Annotated[
        int | None,
        typer.Option(
            help="Take a class-balanced random subset of N samples per class (all of a smaller class), drawn with "
            "--seed and kept in dataset order.",
            rich_help_panel=_DATA_PANEL,
            show_default=False,
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            help="Keep only the first N samples (after --per-class).", rich_help_panel=_DATA_PANEL, show_default=False
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the --per-class draw.", rich_help_panel=_DATA_PANEL)] = 0,
    skip_unreadable: Annotated[
        bool,
        typer.Option(
            help="Leave out images that cannot be decoded (truncated, empty, not an image) instead of stopping at "
            "the first; the file lists their dataset indices in /skipped_index.",
            rich_help_panel=_DATA_PANEL,
        ),
    ] = False,
    layers: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated layer names or globs ('layer*', 'layer4.*') as listed by `nccli layers MODEL`. "
            "A module run k times per forward pass is named by call: NAME#1 … NAME#k. The classifier's input is "
            "CLASSIFIER:input. Default: the top-level blocks and the classifier input.",
            rich_help_panel=_LAYERS_PANEL,
            show_default=False,
        ),
    ] = None,
    pool: Annotated[
        MapPooling,
        typer.Option(
            help="How an N×C×H×W feature map becomes one row per sample: average or max over space (C values), "
            "or flatten (C·H·W values, refused above --max-dim).",
            rich_help_panel=_LAYERS_PANEL,
        ),
    ] = MapPooling.AVG,
    token_pool: Annotated[
        TokenPooling,
        typer.Option(
            help="How an N×T×D token sequence becomes one row per sample: the class token (first), the mean or "
            "max over tokens, or flatten. auto: cls for models with a class token (torchvision ViTs), else mean.",
            rich_help_panel=_LAYERS_PANEL,
        ),
    ] = TokenPooling.AUTO,
    max_dim: Annotated[
        int,
        typer.Option(help="Largest row width flatten may produce per layer.", rich_help_panel=_LAYERS_PANEL),
    ] = DEFAULT_MAX_DIM,
    device: Annotated[
        str,
        typer.Option(help="auto (CUDA if available, else CPU), cpu, cuda or cuda:INDEX.", rich_help_panel=_SPEED_PANEL),
    ] = "auto",
    precision: Annotated[
        Precision,
        typer.Option(
            help="Autocast precision of the forward pass (bf16/fp16 are meant for CUDA).", rich_help_panel=_SPEED_PANEL
        ),
    ] = Precision.FP32,
    batch_size: Annotated[
        int, typer.Option(help="Images per forward pass.", rich_help_panel=_SPEED_PANEL)
    ] = DEFAULT_BATCH_SIZE,
    workers: Annotated[
        int,
        typer.Option(
            help="DataLoader worker processes that read and preprocess images (0: in this process). Default: half "
            "the CPU cores, at most 8, and none on a machine of 2 cores or fewer, where they would slow the model.",
            rich_help_panel=_SPEED_PANEL,
        ),
    ] = DEFAULT_WORKERS,
    dtype: Annotated[
        StorageDtype, typer.Option(help="Float width of the stored features and logits.", rich_help_panel=_OUTPUT_PANEL)
    ] = StorageDtype.FLOAT32,
    compression: Annotated[
        Compression,
        typer.Option(
            help="HDF5 compression of the stored rows (lzf: fast; gzip: smaller but slower).",
            rich_help_panel=_OUTPUT_PANEL,
        ),
    ] = Compression.NONE,
    resume: Annotated[
        bool,
        typer.Option(
            help="Continue FILE.h5.partial left by an interrupted run (model, data and options must match); "
            "skip files already complete. Starts afresh where there is nothing to continue. Under torchrun, each "
            "process continues its own shard (with the same number of processes).",
            rich_help_panel=_OUTPUT_PANEL,
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            help="Replace an existing FILE.h5 (or partial file) instead of refusing.", rich_help_panel=_OUTPUT_PANEL
        ),
    ] = False,
) -> None:
    """Run MODEL over DATA and write per-layer features, labels, logits and the classifier to an HDF5 file."""
    with user_errors():

        from nccli.extract import ExtractConfig, ExtractionInterrupted, ModelOptions, extract_features
        from nccli.extract.distributed import main_process

        config = ExtractConfig(
            models=tuple(models),
            data=data,
            out=out,
            model=ModelOptions(
                arch=arch,
                weights=weights,
                num_classes=num_classes,
                trust_checkpoint=trust_checkpoint,
                init_seed=init_seed,
            ),
            epoch=epoch,
            root=root,
            split=split,
            download=download,
            resize=resize,
            mean=_numbers("--mean", mean),
            std=_numbers("--std", std),
            channels=channels,
            per_class=per_class,
            limit=limit,
            seed=seed,
            skip_unreadable=skip_unreadable,
            layers=None if layers is None else tuple(name.strip() for name in layers.split(",") if name.strip()),
            pool=pool,
            token_pool=token_pool,
            max_dim=max_dim,
            device=device,
            precision=precision,
            batch_size=batch_size,
            workers=workers,
            dtype=dtype,
            compression=compression,
            resume=resume,
            overwrite=overwrite,
            progress=stderr_is_terminal(),
            command=command_line(context),
        )
        try:
            results = extract_features(config)
        except ExtractionInterrupted as stop:
            _stderr(str(stop))
            raise
        if not main_process():  # under torchrun, rank 0 reports for the job
            return
        for result in results:
            for note in result.notes:
                _stderr(f"note: '{result.path}': {note}")
            if not result.skipped and stderr_is_terminal():
                layers_written = len(result.layers)
                _stderr(f"wrote '{result.path}': {result.rows} rows, {layers_written} layers in {result.seconds:.1f} s")
            typer.echo(result.path)


class LayersFormat(enum.StrEnum):
    """Output formats of ``nccli layers``."""

    TEXT = "text"
    CSV = "csv"
    TSV = "tsv"
    JSON = "json"


@app.command(
    "layers",
    help="List the layers `extract --layers` can capture, with module type and output shape.\n\nOne probe batch "
    "of random images runs through the model; layers are listed in forward order with their per-sample output "
    "shape, and '*' marks the default picks of `nccli extract`.",
)
def layers_command(
    model: Annotated[
        str,
        typer.Argument(
            metavar="MODEL",
            help="A torchvision model name or a checkpoint file, as for `nccli extract`.",
            show_default=False,
        ),
    ],
    arch: ArchOption = None,
    weights: WeightsOption = None,
    num_classes: NumClassesOption = None,
    trust_checkpoint: TrustOption = False,
    input_size: Annotated[
        str | None,
        typer.Option(
            help="C,H,W of the random probe images, e.g. 3,32,32. Default: the weights' crop size, else 3,224,224.",
            show_default=False,
        ),
    ] = None,
    fmt: Annotated[
        LayersFormat, typer.Option("--format", "-f", help="text for people; csv, tsv or json for programs.")
    ] = LayersFormat.TEXT,
) -> None:
    """List the layers `extract --layers` can capture, with module type and output shape."""
    with user_errors():
        import csv
        import json

        from nccli.extract import ModelOptions, list_layers

        size = _numbers("--input-size", input_size, int)
        if size is not None and min(size) < 1:
            raise UsageError(f"--input-size takes positive integers, got '{input_size}'")
        options = ModelOptions(arch=arch, weights=weights, num_classes=num_classes, trust_checkpoint=trust_checkpoint)
        rows = [
            {
                "name": layer.name,
                "type": layer.type_name,
                "shape": "×".join(map(str, layer.sample_shape)) if layer.sample_shape is not None else "-",
                "default": layer.default,
            }
            for layer in list_layers(model, options, size)
        ]
        if fmt == LayersFormat.JSON:
            typer.echo(json.dumps(rows, indent=2))
        elif fmt in (LayersFormat.CSV, LayersFormat.TSV):
            delimiter = "," if fmt == LayersFormat.CSV else "\t"
            writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]), delimiter=delimiter)
            writer.writeheader()
            writer.writerows(rows)
        else:
            width = max(len(row["name"]) for row in rows)
            type_width = max(len(row["type"]) for row in rows)
            for row in rows:
                mark = "*" if row["default"] else " "
                typer.echo(f"{mark} {row['name']:<{width}}  {row['type']:<{type_width}}  {row['shape']}")
            if stderr_is_terminal():
                _stderr(
                    "* default pick · NAME#k: k-th call of a module run several times · "
                    "NAME:input: the classifier's input"
                )


@app.command()
def analyze(
    context: typer.Context,
    files: Annotated[
        list[str],
        typer.Argument(help="Feature files (HDF5, as `nccli extract` writes them or any file following the layout).", show_default=False),
    ],
    out: Annotated[
        str,
        typer.Option("--out", "-o", help="The Parquet report to write: one row per (file, layer). Replaced atomically.", show_default=False),
    ],
    layers: Annotated[
        str | None,
        typer.Option(help="Comma-separated layer names or globs to analyze, e.g. 'layer*,fc'. Default: every layer."),
    ] = None,
    means_from: Annotated[
        str | None,
        typer.Option(
            help="A reference feature file (usually the train split) whose class means the nearest-class-centre "
            "metrics (ncc_accuracy, nc4_ncc_mismatch) use: the train-vs-test 'test collapse' setting.",
        ),
    ] = None,
    mse: Annotated[
        bool, typer.Option("--mse", help="Add the MSE decomposition of Han, Papyan & Donoho (2022) on the classifier layer.")
    ] = False,
    weight_decay: Annotated[float, typer.Option(help="Weight decay λ of the MSE decomposition (needs --mse).")] = 0.0,
    classes: Annotated[
        str | None, typer.Option(help="Also write the per-class table (n, var, mean_norm, recalls, ...) to this Parquet file.")
    ] = None,
    pairs: Annotated[
        str | None, typer.Option(help="Also write the per-pair table (cdnv, mean_cos, inter_cos, mean_dist) to this Parquet file.")
    ] = None,
    device: Annotated[
        str, typer.Option(help="Where to compute: auto (CUDA if present), cpu, cuda or cuda:N. Accumulation is float64 everywhere.")
    ] = "auto",
    epsilon: Annotated[float, typer.Option(help="ε of ncc_effective_depth: the first layer whose NCC error is ≤ ε.")] = 0.01,
    block_rows: Annotated[
        int | None,
        typer.Option(help="Rows read per block. Default: about 16 MiB of the widest layer, aligned to its HDF5 chunks."),
    ] = None,
    jobs: Annotated[
        int,
        typer.Option("--jobs", "-j", help="Worker processes that share each file's rows (CPU); their states merge exactly."),
    ] = 1,
) -> None:
    """Compute every neural-collapse metric per layer of each feature file into a Parquet report.

    Files are streamed in row blocks (two passes, float64 state, memory O(K·d) per layer),
    so files far larger than memory work. Example:

        nccli analyze train.h5 test.h5 --means-from train.h5 --out report.parquet
    """
    with user_errors(), contextlib.ExitStack() as held:
        from nccli.analyze import AnalyzeConfig, analyze_features
        from nccli.report.formats import compact, to_rich
        from nccli.report.parquet import check_writable, reserve_outputs, to_table, write_report

        targets = {option: check_writable(path, option) for option, path in (("--out", out), ("--classes", classes), ("--pairs", pairs)) if path}
        held.enter_context(reserve_outputs(targets.values()))  # one writer per report; the second is refused
        config = AnalyzeConfig(
            files=tuple(files),
            layers=_split_list(layers),
            means_from=means_from,
            mse=mse,
            weight_decay=weight_decay,
            device=device,
            depth_epsilon=epsilon,
            block_rows=block_rows,
            jobs=jobs,
            show_progress=stderr_is_terminal(),
        )
        result = analyze_features(config)
        write_report(result, targets["--out"], command_line(context), targets.get("--classes"), targets.get("--pairs"))
        if stderr_is_terminal():
            from rich.console import Console

            summary = to_table(result.summary, schema.SUMMARY_COLUMNS, {})
            Console(stderr=True).print(to_rich(compact(summary), title=f"neural collapse → {out}"))
        typer.echo(out)


@app.command()
def report(
    path: Annotated[str, typer.Argument(help="A Parquet table written by `nccli analyze` (--out, --classes or --pairs).", show_default=False)],
    fmt: Annotated[
        ReportFormat,
        typer.Option("--format", "-f", help="table for people; csv, tsv, json or markdown to stdout for pipes; xlsx to --output."),
    ] = ReportFormat.TABLE,
    output: Annotated[str | None, typer.Option("--output", help="The workbook to write with --format xlsx.")] = None,
    columns: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated columns to show, or 'all'. Default: all, except --format table, which shows the key "
            "columns of a summary report.",
        ),
    ] = None,
) -> None:
    """Print a report for people or pipes: `nccli report r.parquet --format csv > r.csv`."""
    with user_errors():
        from nccli.report.formats import compact, render, select_columns, to_rich, write_xlsx
        from nccli.report.parquet import read_report

        table = read_report(path)
        if columns and columns != "all":
            table = select_columns(table, _split_list(columns))
        elif columns is None and fmt is ReportFormat.TABLE:
            table = compact(table)
        if fmt is ReportFormat.XLSX:
            if output is None:
                raise UsageError("--format xlsx writes a workbook: give it a path with --output r.xlsx")
            write_xlsx(table, output)
            typer.echo(output)
        elif output is not None:
            raise UsageError("--output is only for --format xlsx; other formats go to stdout")
        elif fmt is ReportFormat.TABLE:
            from rich.console import Console

            # On a terminal, fit its width; into a file or pipe, never fold cells.
            Console(width=None if sys.stdout.isatty() else 10_000).print(to_rich(table, title=path))
        else:
            sys.stdout.write(render(table, fmt))


@app.command()
def demo(
    out: Annotated[str, typer.Option("--out", "-o", help="Folder for the feature files, report.parquet and figures/.")] = "nccli-demo",
    figures: Annotated[str | None, typer.Option(help="Where the figures go. Default: OUT/figures.")] = None,
    sample_data: Annotated[
        str | None, typer.Option(help="The bundled sample_data/ folder. Default: the one beside this nccli's source.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N for extraction and analysis.")] = "auto",
) -> None:
    """Show neural collapse offline: a small MLP on the bundled 8×8 digits, six checkpoints.

    Extracts train and test features of every checkpoint, analyzes them (test with the train
    means of the same epoch), writes OUT/report.parquet and the figures, and prints the
    penultimate layer's numbers over training. About 30 s on two CPU cores.
    """
    with user_errors():
        from nccli.demo import SAMPLE_DATA, DemoConfig, penultimate_rows, run_demo
        from nccli.report.formats import to_rich
        from nccli.report.parquet import to_table

        config = DemoConfig(
            out=out,
            sample_data=sample_data or str(SAMPLE_DATA),
            figures=figures,
            device=device,
            show_progress=stderr_is_terminal(),
        )
        result = run_demo(config)
        columns = (schema.COL_SPLIT, schema.COL_EPOCH, "nc1", "nc2_etf", "nc3_duality", "nc4_ncc_mismatch", "ncc_accuracy", "clf_accuracy")
        table = to_table(penultimate_rows(result.summary), columns, {})
        from rich.console import Console

        Console(width=None if sys.stdout.isatty() else 10_000).print(
            to_rich(table, title="penultimate layer over training (test uses the train means)")
        )
        typer.echo(f"report:  {result.report}")
        for path in result.figures:
            typer.echo(f"figure:  {path}")


def _split_list(text: str | None) -> tuple[str, ...] | None:
    """'a, b,c' → ('a', 'b', 'c'); None or empty → None."""
    items = tuple(item.strip() for item in (text or "").split(",") if item.strip())
    return items or None


def main() -> None:
    """Console-script entry point."""
    app()
