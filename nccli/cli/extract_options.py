"""The options of `nccli extract` beyond the model's (``model_options``), one annotated type each."""

from typing import Annotated

import typer

from nccli.cli.model_options import (
    DATA_PANEL,
    LAYERS_PANEL,
    MODEL_PANEL,
    OUTPUT_PANEL,
    SPEED_PANEL,
    TOKENS_PANEL,
)
from nccli.extract.config import (  # torch-free
    Compression,
    MapPooling,
    Normalization,
    Precision,
    Split,
    StorageDtype,
    TokenDtype,
    TokenPooling,
)

ModelsArgument = Annotated[
    list[str],
    typer.Argument(
        metavar="MODEL",
        help="A torchvision model name (resnet18, vit_b_16, ...); timm:NAME (a timm model; the timm extra); a "
        "Hugging Face image classifier: a folder holding config.json, or hf:ORG/NAME from the local cache "
        "(the hf extra); path/to/file.py:callable (your network, random weights); or checkpoint files: a state_dict "
        "(.pt, .pth, .safetensors; with --arch), a torch.export program (.pt2), or a pickled nn.Module "
        "(both with --trust-checkpoint). Several checkpoints or a quoted glob ('ckpt/epoch_*.pt') write one "
        "file each into the --out directory.",
        show_default=False,
    ),
]
DataArgument = Annotated[
    str,
    typer.Argument(
        metavar="DATA",
        help="cifar10, cifar100, mnist, fashionmnist, svhn, stl10 or imagenet (under --root); an image "
        "folder (one subfolder per class); a .npz with x (images: uint8, or floats in [0, 1]) and y (integer "
        "labels); an .h5 with /images and /labels (the same); or fake:N for N random 3×32×32 images in 10 classes. "
        "For a causal language model (a Hugging Face folder, or --arch): token ids (a headerless .bin with "
        "--token-dtype, a 1-D .npy) or text (.txt, .jsonl) that the model's tokenizer reads; every position is a "
        "row, labelled with the next token. A folder written by Hugging Face datasets' save_to_disk (a "
        "DatasetDict's: --split picks the split) gives its input_ids column, else its --text-field column.",
        show_default=False,
    ),
]
OutOption = Annotated[
    str,
    typer.Option(
        "--out",
        "-o",
        help="The feature file to write (FILE.h5). A directory (created if missing) when MODEL names several "
        "checkpoints, when it ends with '/', or when it is an existing directory: one CHECKPOINT_NAME.h5 each.",
        rich_help_panel=OUTPUT_PANEL,
        show_default=False,
    ),
]
EpochOption = Annotated[
    int | None,
    typer.Option(
        help="Epoch (or step) to record for a single checkpoint. By default the checkpoint's own 'epoch' "
        "entry, else the number in its file name (epoch_012.pt → 12).",
        rich_help_panel=MODEL_PANEL,
        show_default=False,
    ),
]
RootOption = Annotated[
    str, typer.Option(help="Directory holding the named torchvision datasets.", rich_help_panel=DATA_PANEL)
]
SplitOption = Annotated[
    Split,
    typer.Option(
        help="Split of a named dataset or of a saved datasets DatasetDict to read (imagenet: test reads val); recorded in the file for any DATA.",
        rich_help_panel=DATA_PANEL,
    ),
]
DownloadOption = Annotated[
    bool,
    typer.Option(help="Download a named dataset into --root if it is not there.", rich_help_panel=DATA_PANEL),
]
ResizeOption = Annotated[
    int | None,
    typer.Option(
        help="Resize the shorter side to N and centre-crop N×N. By default images keep their size (they must "
        "then all have the same size).",
        rich_help_panel=DATA_PANEL,
        show_default=False,
    ),
]
MeanOption = Annotated[
    str | None,
    typer.Option(
        help="Per-channel mean to subtract after scaling pixels to [0, 1], as the model was trained with: one "
        "number or three, comma-separated. Give it with --std; it replaces the model's own preprocessing (that of "
        "--weights or of a Hugging Face image processor). Without one, --mean/--std or --normalize is required, "
        "since features of wrongly normalised images look plausible and are wrong.",
        rich_help_panel=DATA_PANEL,
        show_default=False,
    ),
]
StdOption = Annotated[
    str | None,
    typer.Option(
        help="Per-channel standard deviation to divide by, as the model was trained with: one number or three. "
        "Give it with --mean.",
        rich_help_panel=DATA_PANEL,
        show_default=False,
    ),
]
NormalizeOption = Annotated[
    Normalization | None,
    typer.Option(
        help="How to normalise the images when --mean and --std are not given: none keeps the "
        "pixels in [0, 1]; imagenet uses ImageNet's mean 0.485,0.456,0.406 and std 0.229,0.224,0.225 (their "
        "averages for 1-channel images). It replaces the model's own preprocessing, which is used otherwise "
        "(--weights, a Hugging Face image processor); a model without one needs one of --mean/--std or "
        "--normalize; fake:N data defaults to none. The file's transform attribute records it.",
        rich_help_panel=DATA_PANEL,
        show_default=False,
    ),
]
ChannelsOption = Annotated[
    int | None,
    typer.Option(
        help="Convert images to 1 (grey) or 3 (RGB) channels, e.g. --channels 3 to feed MNIST to a torchvision "
        "model. By default images keep their channels.",
        rich_help_panel=DATA_PANEL,
        show_default=False,
    ),
]
PerClassOption = Annotated[
    int | None,
    typer.Option(
        help="Take a class-balanced random subset of N samples per class (all of a smaller class), drawn with "
        "--seed and kept in dataset order.",
        rich_help_panel=DATA_PANEL,
        show_default=False,
    ),
]
LimitOption = Annotated[
    int | None,
    typer.Option(
        help="Keep only the first N samples (after --per-class).", rich_help_panel=DATA_PANEL, show_default=False
    ),
]
SeedOption = Annotated[int, typer.Option(help="Seed of the --per-class draw.", rich_help_panel=DATA_PANEL)]
SkipUnreadableOption = Annotated[
    bool,
    typer.Option(
        help="Leave out images that cannot be decoded (truncated, empty, not an image) instead of stopping at the "
        "first; the file lists their dataset indices in /skipped_index.",
        rich_help_panel=DATA_PANEL,
    ),
]
LayersOption = Annotated[
    str | None,
    typer.Option(
        help="Comma-separated layer names or globs ('layer*', 'layer4.*') as listed by `nccli layers MODEL`. "
        "A module run k times per forward pass is named by call: NAME#1 … NAME#k. The classifier's input is "
        "CLASSIFIER:input. Default: the top-level blocks and the classifier input.",
        rich_help_panel=LAYERS_PANEL,
        show_default=False,
    ),
]
PoolOption = Annotated[
    MapPooling,
    typer.Option(
        help="How an N×C×H×W feature map becomes one row per sample: average or max over space (C values), "
        "or flatten (C·H·W values, refused above --max-dim).",
        rich_help_panel=LAYERS_PANEL,
    ),
]
TokenPoolOption = Annotated[
    TokenPooling,
    typer.Option(
        help="How an N×T×D token sequence becomes one row per sample: the class token (first), the mean or "
        "max over tokens, or flatten. auto: cls for models with a class token (torchvision ViTs), else mean.",
        rich_help_panel=LAYERS_PANEL,
    ),
]
MaxDimOption = Annotated[
    int,
    typer.Option(help="Largest row width flatten may produce per layer.", rich_help_panel=LAYERS_PANEL),
]
DeviceOption = Annotated[
    str,
    typer.Option(help="auto (CUDA if available, else CPU), cpu, cuda or cuda:INDEX.", rich_help_panel=SPEED_PANEL),
]
PrecisionOption = Annotated[
    Precision,
    typer.Option(
        help="Autocast precision of the forward pass (bf16/fp16 are meant for CUDA).", rich_help_panel=SPEED_PANEL
    ),
]
BatchSizeOption = Annotated[int, typer.Option(help="Images per forward pass.", rich_help_panel=SPEED_PANEL)]
WorkersOption = Annotated[
    int,
    typer.Option(
        help="DataLoader worker processes that read and preprocess images (0: in this process). Default: half "
        "the CPU cores, at most 8, and none on a machine of 2 cores or fewer, where they would slow the model.",
        rich_help_panel=SPEED_PANEL,
    ),
]
DtypeOption = Annotated[
    StorageDtype, typer.Option(help="Float width of the stored features and logits.", rich_help_panel=OUTPUT_PANEL)
]
CompressionOption = Annotated[
    Compression,
    typer.Option(
        help="HDF5 compression of the stored rows (lzf: fast; gzip: smaller but slower).",
        rich_help_panel=OUTPUT_PANEL,
    ),
]
ResumeOption = Annotated[
    bool,
    typer.Option(
        help="Continue FILE.h5.partial left by an interrupted run (model, data and options must match); "
        "skip files already complete. Starts afresh where there is nothing to continue. Under torchrun, each "
        "process continues its own shard (with the same number of processes).",
        rich_help_panel=OUTPUT_PANEL,
    ),
]
OverwriteOption = Annotated[
    bool,
    typer.Option(
        help="Replace an existing FILE.h5 (or partial file) instead of refusing.", rich_help_panel=OUTPUT_PANEL
    ),
]
SeqLenOption = Annotated[
    int | None,
    typer.Option(
        help="Tokens per window a language model reads. Default: the model's context.",
        rich_help_panel=TOKENS_PANEL,
        show_default=False,
    ),
]
StrideOption = Annotated[
    int | None,
    typer.Option(
        help="Tokens between window starts. Default: --seq-len (no overlap). Below it, each window after the first "
        "adds only its last --stride positions as rows, so every token is a row once, with at least "
        "seq-len − stride tokens of context.",
        rich_help_panel=TOKENS_PANEL,
        show_default=False,
    ),
]
MaxTokensOption = Annotated[
    int | None,
    typer.Option(help="Keep only the first N token rows.", rich_help_panel=TOKENS_PANEL, show_default=False),
]
TokenDtypeOption = Annotated[
    TokenDtype | None,
    typer.Option(
        help="The width of the ids in a headerless .bin token file (nanoGPT writes uint16).",
        rich_help_panel=TOKENS_PANEL,
        show_default=False,
    ),
]
TextFieldOption = Annotated[
    str,
    typer.Option(
        help="The field of each .jsonl line (the column of a datasets folder without input_ids) that holds a document's text.",
        rich_help_panel=TOKENS_PANEL,
    ),
]


def extract_config(options: dict, context: typer.Context):
    """The library's ExtractConfig from a command's options, named as ExtractConfig's fields (``extract`` and
    ``measure`` take the same ones, ``measure`` fewer); imported late: it pulls in torch."""
    from nccli.cli.common import command_line, numbers, split_list, stderr_is_terminal
    from nccli.cli.model_options import model_options
    from nccli.extract import ExtractConfig, TokenOptions

    options = dict(options)
    model = model_options(
        *(options.pop(name) for name in ("arch", "weights", "num_classes", "trust_checkpoint", "init_seed"))
    )
    tokens = TokenOptions(
        *(options.pop(name) for name in ("seq_len", "stride", "max_tokens", "token_dtype", "text_field"))
    )
    return ExtractConfig(
        models=tuple(options.pop("models")),
        model=model,
        tokens=tokens,
        mean=numbers("--mean", options.pop("mean")),
        std=numbers("--std", options.pop("std")),
        layers=split_list(options.pop("layers")),
        progress=stderr_is_terminal(),
        command=command_line(context),
        **options,
    )
