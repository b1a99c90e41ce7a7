"""`nccli measure`: MODEL over DATA straight into the Parquet report, no feature file
(:func:`nccli.analyze.outputs.write_measurement`)."""

from typing import Annotated

import typer

from nccli.cli.analyze_options import (
    ClassesOption,
    EpsilonOption,
    MeansFromOption,
    MinCountOption,
    MseOption,
    PairsOption,
    PairsTopOption,
    SnrOption,
    TopClassesOption,
    WeightDecayOption,
)
from nccli.cli.common import command_line, report_written, user_errors
from nccli.cli.extract_options import (
    BatchSizeOption,
    ChannelsOption,
    DataArgument,
    DeviceOption,
    DownloadOption,
    EpochOption,
    LayersOption,
    LimitOption,
    MaxDimOption,
    MaxTokensOption,
    MeanOption,
    NormalizeOption,
    PerClassOption,
    PoolOption,
    PrecisionOption,
    ResizeOption,
    RootOption,
    SeedOption,
    SeqLenOption,
    SplitOption,
    StdOption,
    StrideOption,
    TextFieldOption,
    TokenDtypeOption,
    TokenPoolOption,
    WorkersOption,
    extract_config,
)
from nccli.cli.model_options import (
    ArchOption,
    InitSeedOption,
    ModelArgument,
    NumClassesOption,
    TrustOption,
    WeightsOption,
)
from nccli.extract.config import (  # torch-free
    DEFAULT_BATCH_SIZE,
    DEFAULT_MAX_DIM,
    DEFAULT_ROOT,
    DEFAULT_WORKERS,
    MapPooling,
    Precision,
    Split,
    TokenPooling,
)

# measure's own parameters and the analysis options; the rest are ExtractConfig's fields, by name
NOT_EXTRACT_OPTIONS = (
    "context", "model", "out", "means_from", "mse", "weight_decay", "snr", "classes", "pairs", "pairs_top", "epsilon",
    "top_classes", "min_count",
)  # fmt: skip


def measure(
    context: typer.Context,
    model: ModelArgument,
    data: DataArgument,
    out: Annotated[
        str,
        typer.Option(
            "--out",
            "-o",
            help="The Parquet report to write: one row per layer. Replaced atomically.",
            show_default=False,
        ),
    ],
    arch: ArchOption = None,
    weights: WeightsOption = None,
    num_classes: NumClassesOption = None,
    trust_checkpoint: TrustOption = False,
    init_seed: InitSeedOption = 0,
    epoch: EpochOption = None,
    root: RootOption = DEFAULT_ROOT,
    split: SplitOption = Split.TRAIN,
    download: DownloadOption = False,
    resize: ResizeOption = None,
    mean: MeanOption = None,
    std: StdOption = None,
    normalize: NormalizeOption = None,
    channels: ChannelsOption = None,
    per_class: PerClassOption = None,
    limit: LimitOption = None,
    seed: SeedOption = 0,
    seq_len: SeqLenOption = None,
    stride: StrideOption = None,
    max_tokens: MaxTokensOption = None,
    token_dtype: TokenDtypeOption = None,
    text_field: TextFieldOption = "text",
    layers: LayersOption = None,
    pool: PoolOption = MapPooling.AVG,
    token_pool: TokenPoolOption = TokenPooling.AUTO,
    max_dim: MaxDimOption = DEFAULT_MAX_DIM,
    device: DeviceOption = "auto",
    precision: PrecisionOption = Precision.FP32,
    batch_size: BatchSizeOption = DEFAULT_BATCH_SIZE,
    workers: WorkersOption = DEFAULT_WORKERS,
    means_from: MeansFromOption = None,
    mse: MseOption = False,
    weight_decay: WeightDecayOption = 0.0,
    snr: SnrOption = False,
    top_classes: TopClassesOption = None,
    min_count: MinCountOption = None,
    classes: ClassesOption = None,
    pairs: PairsOption = None,
    pairs_top: PairsTopOption = None,
    epsilon: EpsilonOption = 0.01,
) -> None:
    """Run MODEL over DATA and write the neural-collapse report directly: `nccli extract` then `nccli analyze`, with no feature file.

    The model runs once per pass: pass 1 gives the class means, pass 2 recomputes the forward pass. Under torchrun each process runs the model over its part of DATA and rank 0 writes the report. The numbers are those of extract + analyze on the same model and data; a model that does not give the same rows twice (dropout, augmentation) is refused. MODEL and DATA are as for `nccli extract`, including causal language models over token ids or text, whose evaluation sets are far too large for a feature file. Example:

        nccli measure ./tiny-gpt val.bin --token-dtype uint16 --seq-len 256 --out tokens.parquet
    """
    extract_options = {name: value for name, value in locals().items() if name not in NOT_EXTRACT_OPTIONS}
    with user_errors():
        from nccli.analyze.model_runs import MeasureConfig
        from nccli.analyze.outputs import write_measurement

        source = extract_config({**extract_options, "models": (model,), "out": out}, context)
        config = MeasureConfig(source, means_from, mse, weight_decay, snr, pairs_top, epsilon, top_classes, min_count)
        result = write_measurement(config, out, classes, pairs, command_line(context))
        report_written(result, out)
