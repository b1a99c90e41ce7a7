"""`nccli extract`: run a model over a dataset and write its per-layer features (:func:`nccli.extract_features`)."""

import typer

from nccli.cli.common import (
    echo_error,
    stderr_is_terminal,
    user_errors,
)
from nccli.cli.extract_options import (
    BatchSizeOption,
    ChannelsOption,
    CompressionOption,
    DataArgument,
    DeviceOption,
    DownloadOption,
    DtypeOption,
    EpochOption,
    LayersOption,
    LimitOption,
    MaxDimOption,
    MaxTokensOption,
    MeanOption,
    ModelsArgument,
    NormalizeOption,
    OutOption,
    OverwriteOption,
    PerClassOption,
    PoolOption,
    PrecisionOption,
    ResizeOption,
    ResumeOption,
    RootOption,
    SeedOption,
    SeqLenOption,
    SkipUnreadableOption,
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
    NumClassesOption,
    TrustOption,
    WeightsOption,
)
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


def extract(
    context: typer.Context,
    models: ModelsArgument,
    data: DataArgument,
    out: OutOption,
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
    skip_unreadable: SkipUnreadableOption = False,
    layers: LayersOption = None,
    pool: PoolOption = MapPooling.AVG,
    token_pool: TokenPoolOption = TokenPooling.AUTO,
    max_dim: MaxDimOption = DEFAULT_MAX_DIM,
    device: DeviceOption = "auto",
    precision: PrecisionOption = Precision.FP32,
    batch_size: BatchSizeOption = DEFAULT_BATCH_SIZE,
    workers: WorkersOption = DEFAULT_WORKERS,
    dtype: DtypeOption = StorageDtype.FLOAT32,
    compression: CompressionOption = Compression.NONE,
    resume: ResumeOption = False,
    overwrite: OverwriteOption = False,
    seq_len: SeqLenOption = None,
    stride: StrideOption = None,
    max_tokens: MaxTokensOption = None,
    token_dtype: TokenDtypeOption = None,
    text_field: TextFieldOption = "text",
) -> None:
    """Run MODEL over DATA and write per-layer features, labels, logits and the classifier to an HDF5 file.

    MODEL is a torchvision name, timm:NAME, a Hugging Face folder or hf:ORG/NAME, file.py:callable, or checkpoints; `nccli models` lists the names. Unless the model brings its own preprocessing (--weights, a Hugging Face image processor), say how the images are normalised: --mean and --std (the statistics the model was trained with), --normalize none or --normalize imagenet; either replaces the model's own. When the file has logits, the top-1 accuracy of the stored logits is printed at the end and recorded in the file.

    The file is written as FILE.h5.partial and renamed when complete; after Ctrl-C or a crash, rerun the same command with --resume. Read the file with `nccli analyze FILE.h5`; `nccli layers MODEL` lists the layers --layers can pick.
    """
    options = {name: value for name, value in locals().items() if name != "context"}  # ExtractConfig's names
    with user_errors():
        from nccli.distributed import main_process
        from nccli.extract import ExtractionInterrupted, extract_features

        config = extract_config(options, context)
        try:
            results = extract_features(config)
        except ExtractionInterrupted as stop:
            echo_error(str(stop))
            raise
        if not main_process():  # under torchrun, rank 0 reports for the job
            return
        for result in results:
            for note in result.notes:
                echo_error(f"note: '{result.path}': {note}")
            if result.logits_accuracy is not None:
                echo_error(
                    f"'{result.path}': top-1 accuracy of the model's logits on these {result.rows} samples: "
                    f"{result.logits_accuracy:.4f}"
                )
            if not result.skipped and stderr_is_terminal():
                layers_written = len(result.layers)
                echo_error(
                    f"wrote '{result.path}': {result.rows} rows, {layers_written} layers in {result.seconds:.1f} s"
                )
            typer.echo(result.path)
