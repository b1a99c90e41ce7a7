"""`nccli demo`: the whole pipeline offline on the bundled digits (:func:`nccli.demo.run_demo`)."""

from typing import Annotated

import typer

from nccli import schema
from nccli.cli.common import print_table, stderr_is_terminal, user_errors


def demo(
    out: Annotated[
        str, typer.Option("--out", "-o", help="Folder for the feature files, report.parquet and figures/.")
    ] = "nccli-demo",
    figures: Annotated[str | None, typer.Option(help="Where the figures go. Default: OUT/figures.")] = None,
    sample_data: Annotated[
        str | None, typer.Option(help="The bundled sample_data/ folder. Default: the one beside this nccli's source.")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N for extraction and analysis.")] = "auto",
    lm: Annotated[
        bool,
        typer.Option(
            "--lm",
            help="Token-level collapse instead: a tiny causal language model trained here on text of a small bundled "
            "grammar (about a minute on two CPU cores; needs the hf extra), measured at five training steps.",
        ),
    ] = False,
) -> None:
    """Show neural collapse offline: a small MLP on the bundled 8×8 digits, six checkpoints.

    Extracts train and test features of every checkpoint, analyzes them (test with the train
    means of the same epoch), writes OUT/report.parquet and the figures, and prints the
    penultimate layer's numbers over training. About 30 s on two CPU cores.
    """
    with user_errors():
        from nccli.demo import SAMPLE_DATA, DemoConfig, penultimate_rows, run_demo

        if lm:
            _language_demo(out, figures, device)
            return

        config = DemoConfig(
            out=out,
            sample_data=sample_data or str(SAMPLE_DATA),
            figures=figures,
            device=device,
            show_progress=stderr_is_terminal(),
        )
        result = run_demo(config)
        columns = (
            schema.COL_SPLIT,
            schema.COL_EPOCH,
            "nc1",
            "nc2_etf",
            "nc3_duality",
            "nc4_ncc_mismatch",
            "ncc_accuracy",
            "clf_accuracy",
        )
        _print_outcome(
            result,
            penultimate_rows(result.summary),
            columns,
            "penultimate layer over training (test uses the train means)",
        )


def _language_demo(out: str, figures: str | None, device: str) -> None:
    from nccli.demo_lm import LanguageDemoConfig, classifier_rows, run_language_demo

    config = LanguageDemoConfig(out=out, figures=figures, device=device, show_progress=stderr_is_terminal())
    result = run_language_demo(config)
    columns = (
        schema.COL_SPLIT,
        schema.COL_EPOCH,
        "nc1_tilde",
        "gnc2_log_var",
        "nc3_uniform_duality",
        "nc4_ncc_mismatch",
        "clf_accuracy",
    )
    title = "final norm (the LM head's input) over training steps (epoch = step)"
    _print_outcome(result, classifier_rows(result.summary), columns, title)


def _print_outcome(result, rows: list[dict], columns: tuple[str, ...], title: str) -> None:
    """The demo's rows as a table for people, then the report's and the figures' paths."""
    from nccli.report.parquet import to_table

    print_table(
        to_table(rows, columns, {}),
        title=title,
        advice=f"choose columns with `nccli report {result.report} --columns ...`",
    )
    typer.echo(f"report:  {result.report}")
    for path in result.figures:
        typer.echo(f"figure:  {path}")
