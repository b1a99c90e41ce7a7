"""The conventions of an analysis, recorded in the report's metadata (``docs/report.md``, key ``conventions``).

Normalisations, cut-offs and choices that other tools make differently
(population versus sample variances, the global mean, centring), so that a
number can be compared with theirs.
"""

from nccli import schema
from nccli.analyze.config import AnalyzeConfig
from nccli.analyze.kept_classes import describe
from nccli.metrics import formulas


def conventions(config: AnalyzeConfig, device: str, summary: list[dict], references: dict) -> dict:
    """The choices other tools make differently, so a number can be compared (``docs/report.md``).

    Takes each summary row's Σ_B rank out of the row (it belongs to the metadata, not to a column).
    ``references``: each file's reference (its info, or its path), or None.
    """
    ranks: dict[str, dict[str, int]] = {}
    for row in summary:
        ranks.setdefault(row[schema.COL_FILE], {})[row[schema.COL_LAYER]] = row.pop("_sigma_b_rank")
    return {
        "global_mean": "mean of class means: μ_G = (1/K) Σ_c μ_c over present classes",
        "sigma_w": "Σ_W = (1/N) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ (population, not N − 1)",
        "sigma_b": "Σ_B = (1/K) Σ_c (μ_c − μ_G)(μ_c − μ_G)ᵀ (population, not K − 1)",
        "std": "population standard deviation (ddof = 0) in nc2_equinorm and nc2_equiangular",
        "pinv_cutoff": "Σ_B⁺ keeps eigenvalues above λ_max · max(K, d) · ε_float64, at most K − 1 of them",
        "sigma_b_rank": ranks,
        "coincident_means": f"two class means closer than {formulas.COINCIDENCE_TOLERANCE:g} × max_c ‖μ_c‖ coincide",
        "cosine_view": "raw (uncentred) features; pairs i = j included; all-zero vectors left out",
        "ncc_means": (
            f"class means of the --means-from '{config.means_from}' file paired with each file (ncc_means_from)"
        )
        if config.means_from
        else "each file's own class means",
        "ncc_means_from": {
            file: file if reference is None else getattr(reference, "path", reference)
            for file, reference in references.items()
        }
        if config.means_from
        else None,
        "ties": "ties go to the lowest class id",
        "kept_classes": describe(config),
        "classes": "from the logits (clf_accuracy, nc4_ncc_mismatch, margins, ce_loss, ce_excess's CE₀): all "
        "num_classes outputs, as the network decides; W's geometry against the class means (w_*, nc3_*, K, n, "
        "the bounds): present classes; the NCC rule: the classes that have a mean",
        "mse": {"weight_decay": config.weight_decay, "extended_features": "h̃ = [h; 1], W̃ = [W, b] over all classes"}
        if config.mse
        else None,
        "classifier_geometry": "w_* use the rows w_c of present classes, not centred",
        "variances": "population (ddof = 0): gnc2_dist_var, gnc2_log_var, nc3_uniform_duality",
        "margin_normalized": "bias-free margin min_i (w_{y_i}·h_i − max_{c≠y_i} w_c·h_i) over all num_classes outputs, "
        "n = N/K, ‖H‖_F of uncentred features; with unequal class counts still n = N/K, and the bound 1 holds for "
        "balanced classes only",
        "ce_excess": "cross-entropy of the bias-free logits Wh minus log(1 + (K−1)exp(−Kαβ/(K−1))), "
        "α = √(Σ_i‖h_i‖²/N), β = ‖W‖_F/√K (present classes)",
        "snr": "singular values of Σ_W^{−1/2}Mᵀ; null when Σ_W is singular (an eigenvalue ≤ λ_max·d·ε)"
        if config.snr
        else None,
        "ood": f"nc5_ood_orthogonality against the mean of every row of '{config.ood}' (not centred)"
        if config.ood
        else None,
        "ncc_effective_depth_epsilon": config.depth_epsilon,
        "pair_table": "every pair c < c'"
        if config.pairs_top is None
        else (
            f"per layer, the {config.pairs_top} pairs with the largest cdnv (coincident pairs, cdnv null, first; "
            "ties by class ids)"
        ),
        "device": device,
    }
