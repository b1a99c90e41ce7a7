"""`nccli models`: the MODEL names a zoo offers (:func:`nccli.list_models`), one per line."""

from typing import Annotated

import typer

from nccli.cli.common import echo_error, stderr_is_terminal, user_errors
from nccli.extract.config import Zoo  # torch-free


def models(
    zoo: Annotated[
        Zoo,
        typer.Argument(
            help="torchvision (its classification models), timm (the timm extra) or hf (the Hugging Face models in "
            "the local cache; the hf extra).",
            show_default=False,
        ),
    ],
    pattern: Annotated[
        str, typer.Argument(help="A glob the names must match, quoted: 'convnext*'. Default: every name.")
    ] = "*",
    pretrained: Annotated[
        bool,
        typer.Option(help="timm: list the pretrained weights, NAME.TAG, instead of the architectures."),
    ] = False,
) -> None:
    """List the model names of a zoo, as MODEL of `nccli extract` and `nccli layers` takes them.

    `nccli models timm 'convnext*'` prints timm:convnext_atto, timm:convnext_base, ...; a name with a tag (timm:convnext_tiny.fb_in1k) names pretrained weights for --weights DEFAULT.
    """
    with user_errors():
        from nccli.extract import list_models

        names = list_models(zoo, pattern, pretrained)
        for name in names:
            typer.echo(name)
        if not names and stderr_is_terminal():
            echo_error(f"no {zoo} model matches '{pattern}'")
