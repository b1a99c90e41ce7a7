"""`nccli convert`: arrays saved by other tools → a feature file (:func:`nccli.convert_features`)."""

from typing import Annotated

import typer

from nccli import schema
from nccli.cli.common import command_line, echo_error, stderr_is_terminal, user_errors
from nccli.extract.config import MapPooling  # torch-free

HELP = (
    "Write a feature file from arrays other tools saved: .npy, .npz, .pt/.pth, .safetensors."
    "\n\nA .npy file holds one array, its key the file name; a .pt/.pth file a dict of tensors or arrays, "
    "loaded with weights_only (never unpickling code). Several SOURCEs form one key space."
    "\n\nKeys taken when an option is not given (the first present): --features "
    + "/".join(schema.CONVERT_FEATURES_KEYS)
    + "; --labels "
    + "/".join(schema.CONVERT_LABELS_KEYS)
    + "; --weight "
    + "/".join(schema.CONVERT_WEIGHT_KEYS)
    + "; --bias "
    + "/".join(schema.CONVERT_BIAS_KEYS)
    + "; --logits "
    + "/".join(schema.CONVERT_LOGITS_KEYS)
    + "."
    "\n\nEverything `nccli analyze` checks is checked first; the file is written as FILE.h5.partial and renamed "
    "when complete. Example: nccli convert feats.npz --features penult --features fc_in=head --labels y --out run.h5"
)


def convert(
    context: typer.Context,
    sources: Annotated[
        list[str], typer.Argument(metavar="SOURCE", help="Files holding the arrays.", show_default=False)
    ],
    out: Annotated[str, typer.Option("--out", "-o", help="The feature file to write (FILE.h5).", show_default=False)],
    features: Annotated[
        list[str] | None,
        typer.Option(
            metavar="KEY[=LAYER]",
            help="An array of features, one layer each, in forward order (repeat the option); (N, d) rows, or "
            "(N, C, H, W...) maps pooled per --pool. LAYER names it in the file (default: KEY).",
            show_default=False,
        ),
    ] = None,
    labels: Annotated[
        str | None, typer.Option(metavar="KEY", help="The integer class labels, shape (N,).", show_default=False)
    ] = None,
    weight: Annotated[
        str | None,
        typer.Option(metavar="KEY", help="The classifier's weight W, shape (num_classes, d).", show_default=False),
    ] = None,
    bias: Annotated[
        str | None,
        typer.Option(metavar="KEY", help="The classifier's bias b, shape (num_classes,).", show_default=False),
    ] = None,
    classifier_layer: Annotated[
        str | None,
        typer.Option(
            metavar="LAYER",
            help="The layer whose features W consumes. Default: the only layer as wide as W.",
            show_default=False,
        ),
    ] = None,
    logits: Annotated[
        str | None, typer.Option(metavar="KEY", help="The model's outputs, shape (N, num_classes).", show_default=False)
    ] = None,
    class_names: Annotated[
        str | None,
        typer.Option(
            metavar="FILE", help="A text file with one class name per line, in class-id order.", show_default=False
        ),
    ] = None,
    split: Annotated[
        str, typer.Option(help="The split the rows come from (train, test, ...), recorded in the file.")
    ] = schema.DEFAULT_SPLIT,
    epoch: Annotated[int | None, typer.Option(help="The training epoch or step to record.", show_default=False)] = None,
    num_classes: Annotated[
        int | None,
        typer.Option(help="Size of the label space. Default: max(label) + 1, or W's rows if more.", show_default=False),
    ] = None,
    pool: Annotated[
        MapPooling, typer.Option(help="How (N, C, H, W...) maps become rows, as in `nccli extract`.")
    ] = MapPooling.AVG,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing FILE.h5 instead of refusing.")
    ] = False,
) -> None:
    with user_errors():
        from nccli.convert import ConvertConfig, convert_features

        config = ConvertConfig(
            sources=tuple(sources),
            out=out,
            features=tuple(features or ()),
            labels=labels,
            weight=weight,
            bias=bias,
            classifier_layer=classifier_layer,
            logits=logits,
            class_names=class_names,
            split=split,
            epoch=epoch,
            num_classes=num_classes,
            pool=pool,
            overwrite=overwrite,
            show_progress=stderr_is_terminal(),
            command=command_line(context),
        )
        result = convert_features(config)
        if stderr_is_terminal():
            classifier = f", classifier on '{result.classifier_layer}'" if result.classifier_layer else ""
            echo_error(
                f"wrote '{result.out}': {result.n_samples} rows, {result.num_classes} classes, layers {', '.join(result.layers)}{classifier}"
            )
        typer.echo(result.out)
