"""Options that `nccli extract` and `nccli layers` share: how a model is built, declared once."""

from typing import Annotated

import typer

MODEL_PANEL = "Model"
DATA_PANEL = "Data"
LAYERS_PANEL = "Layers"
SPEED_PANEL = "Speed"
OUTPUT_PANEL = "Output file"
TOKENS_PANEL = "Tokens (language models)"

ModelArgument = Annotated[
    str,
    typer.Argument(
        metavar="MODEL",
        help="A torchvision model name, timm:NAME, a Hugging Face folder or hf:ORG/NAME, file.py:callable, or a "
        "checkpoint file, as for `nccli extract`.",
        show_default=False,
    ),
]
ArchOption = Annotated[
    str | None,
    typer.Option(
        help="The network a state_dict checkpoint fits: a torchvision model name (resnet18), timm:NAME, "
        "module.path:callable, or path/to/file.py:callable. The callable gets num_classes=K when --num-classes "
        "is given.",
        rich_help_panel=MODEL_PANEL,
        show_default=False,
    ),
]
WeightsOption = Annotated[
    str | None,
    typer.Option(
        help="Pretrained weights. For a torchvision name: e.g. IMAGENET1K_V1 or DEFAULT, from the torch hub "
        "cache (downloaded when online). For timm:NAME: DEFAULT (the tag in NAME, or timm's default) or a tag "
        "such as fb_in1k, from the local Hugging Face cache (set HF_HUB_OFFLINE=0 to download), or a checkpoint "
        "file whose state_dict fits NAME. Pretrained weights bring their own preprocessing, which --mean/--std "
        "or --normalize replace.",
        rich_help_panel=MODEL_PANEL,
        show_default=False,
    ),
]
NumClassesOption = Annotated[
    int | None,
    typer.Option(
        help="Number of classifier outputs to build the model with. By default the torchvision default, or "
        "for --arch NAME the width of the checkpoint's last linear layer.",
        rich_help_panel=MODEL_PANEL,
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
        rich_help_panel=MODEL_PANEL,
    ),
]


InitSeedOption = Annotated[
    int,
    typer.Option(
        help="Seed of the random initialisation of a MODEL built without weights (a torchvision or timm name, "
        "file.py:callable, a Hugging Face folder with config.json only), recorded in the file: torch is seeded "
        "right before the model is built, so the same command, --resume and every torchrun process build the "
        "same network.",
        rich_help_panel=MODEL_PANEL,
    ),
]


def model_options(
    arch: str | None, weights: str | None, num_classes: int | None, trust_checkpoint: bool, init_seed: int = 0
):
    """The library's ModelOptions from the shared options (imported late: it pulls in torch)."""
    from nccli.extract import ModelOptions

    return ModelOptions(
        arch=arch, weights=weights, num_classes=num_classes, trust_checkpoint=trust_checkpoint, init_seed=init_seed
    )
