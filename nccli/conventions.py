"""The report's ``conventions`` metadata: the choices papers and other tools make differently (``report.md``)."""

from typing import TYPE_CHECKING

from nccli import schema
from nccli.metrics import formulas
from nccli.metrics.backend import Backend

if TYPE_CHECKING:  # analyze.py imports this module
    from nccli.analyze import AnalysisResult, AnalyzeConfig


def conventions(config: "AnalyzeConfig", xp: Backend, result: "AnalysisResult", references: dict) -> dict:
    """The choices other tools make differently, so a number can be compared (``report.md``); takes the
    Σ_B rank of each summary row (``_sigma_b_rank``) out of the row into the record."""
    ranks: dict[str, dict[str, int]] = {}
    for row in result.summary:
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
        "ncc_means": f"class means of the --means-from '{config.means_from}' file paired with each file (ncc_means_from)"
        if config.means_from
        else "each file's own class means",
        "ncc_means_from": {file: file if reference is None else reference.path for file, reference in references.items()}
        if config.means_from
        else None,
        "ties": "argmin / argmax over present classes; ties go to the lowest class id",
        "mse": {"weight_decay": config.weight_decay, "extended_features": "h̃ = [h; 1], W̃ = [W, b] over all classes"}
        if config.mse
        else None,
        "ncc_effective_depth_epsilon": config.depth_epsilon,
        "pair_table": "every pair c < c'"
        if config.pairs_top is None
        else f"per layer, the {config.pairs_top} pairs with the largest cdnv (coincident pairs, cdnv null, first; ties by class ids)",
        "device": xp.name,
    }
