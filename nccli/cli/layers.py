"""`nccli layers`: what `extract --layers` can capture in a model (:func:`nccli.list_layers`)."""

import enum
import sys
from typing import Annotated

import typer

from nccli.cli.common import echo_error, numbers, stderr_is_terminal, user_errors
from nccli.cli.model_options import (
    ArchOption,
    ModelArgument,
    NumClassesOption,
    TrustOption,
    WeightsOption,
    model_options,
)
from nccli.errors import UsageError


class LayersFormat(enum.StrEnum):
    """Output formats of ``nccli layers``."""

    TEXT = "text"
    CSV = "csv"
    TSV = "tsv"
    JSON = "json"


def layers_command(
    model: ModelArgument,
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
    """List the layers `extract --layers` can capture, with module type and output shape.

    One probe batch of random images runs through the model; layers are listed in forward order with their per-sample output shape, and '*' marks the default picks of `nccli extract`.
    """
    with user_errors():
        import csv
        import json

        from nccli.extract import list_layers

        size = numbers("--input-size", input_size, int)
        if size is not None and min(size) < 1:
            raise UsageError(f"--input-size takes positive integers, got '{input_size}'")
        options = model_options(arch, weights, num_classes, trust_checkpoint)
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
                echo_error(
                    "* default pick · NAME#k: k-th call of a module run several times · "
                    "NAME:input: the classifier's input"
                )
