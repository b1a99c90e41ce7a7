"""The analysis options `nccli analyze` and `nccli measure` share, one annotated type each."""

from typing import Annotated

import typer

MeansFromOption = Annotated[
    str | None,
    typer.Option(
        help="A reference feature file (usually the train split) whose class means the nearest-class-centre "
        "metrics (ncc_accuracy, nc4_ncc_mismatch) use: the train-vs-test 'test collapse' setting. A folder or "
        "quoted glob of them ('train/*.h5') pairs each file with the reference of its epoch, else of its file "
        "name. Refused: a reference of another epoch or model, and files that cannot be paired.",
    ),
]

MseOption = Annotated[
    bool,
    typer.Option("--mse", help="Add the MSE decomposition of Han, Papyan & Donoho (2022) on the classifier layer."),
]

WeightDecayOption = Annotated[float, typer.Option(help="Weight decay λ of the MSE decomposition (needs --mse).")]

SnrOption = Annotated[
    bool,
    typer.Option(
        "--snr",
        help="Add snr_min and snr_max, the extreme singular values of Σ_W^(-1/2)Mᵀ (Han, Papyan & Donoho 2022), "
        "on the classifier layer. Like --mse it needs a d × d matrix, so the same width limit applies.",
    ),
]

OodOption = Annotated[
    str | None,
    typer.Option(
        help="A feature file of out-of-distribution inputs through the same network (same layer names and widths): "
        "adds nc5_ood_orthogonality, the mean |cos| between each class mean and the OOD features' mean (Ammar et al. 2024).",
    ),
]

ClassesOption = Annotated[
    str | None,
    typer.Option(help="Also write the per-class table (n, var, mean_norm, recalls, w_norm, ...) to this Parquet file."),
]

PairsOption = Annotated[
    str | None,
    typer.Option(
        help="Also write the per-pair table (cdnv, mean_cos, inter_cos, mean_dist, w_cos) to this Parquet file, streamed as it "
        "is computed. Above 50 million rows in all, add --pairs-top."
    ),
]

PairsTopOption = Annotated[
    int | None,
    typer.Option(
        help="With --pairs: keep per layer only the N pairs with the largest cdnv (the most confusable; ties by class ids)."
    ),
]

EpsilonOption = Annotated[float, typer.Option(help="ε of ncc_effective_depth: the first layer whose NCC error is ≤ ε.")]

TopClassesOption = Annotated[
    int | None,
    typer.Option(
        help="Analyze only the N classes with the most rows in each file (ties: the lower class id), as for a language "
        "model's many rare tokens: the other classes' rows are left out of every metric and of n_samples and n_classes, "
        "as if the file held only these rows; the classifier still decides over all its outputs."
    ),
]

MinCountOption = Annotated[
    int | None,
    typer.Option(
        help="Analyze only the classes with at least M rows in each file, leaving the others' rows out as "
        "--top-classes does; with --top-classes, the classes that meet both."
    ),
]
