"""Every name in nccli's file formats, in one place.

The HDF5 feature file (``docs/feature-file.md``, format version 1) and
the Parquet report (``docs/report.md``, ``docs/metrics.md``). No other module spells
these strings.
"""

from dataclasses import dataclass

# --- feature file: identity -------------------------------------------------
FORMAT_NAME = "nccli.features"
FORMAT_VERSION = 1

# --- feature file: root attributes ------------------------------------------
ATTR_FORMAT = "nccli_format"
ATTR_FORMAT_VERSION = "format_version"
ATTR_NUM_CLASSES = "num_classes"
ATTR_CLASS_NAMES = "class_names"
ATTR_SPLIT = "split"
ATTR_EPOCH = "epoch"
ATTR_COMPLETE = "complete"
ATTR_ROWS_WRITTEN = "rows_written"
ATTR_MODEL = "model"
ATTR_LOGITS_ACCURACY = "logits_accuracy"  # float: top-1 accuracy of /logits against /labels (nccli extract)
PROVENANCE_ATTRS = (
    "model",
    "weights",
    "checkpoint",
    "checkpoint_sha256",
    "dataset",
    "transform",
    "command",
    "created",
    "nccli_version",
    "torch_version",
    "model_library",
)
DEFAULT_SPLIT = "train"

# --- feature file: datasets and groups --------------------------------------
LABELS = "labels"
LAYERS = "layers"
CLASSIFIER = "classifier"
CLASSIFIER_WEIGHT = "classifier/weight"
CLASSIFIER_BIAS = "classifier/bias"
LOGITS = "logits"
SAMPLE_INDEX = "sample_index"

# --- feature file: per-layer and classifier attributes ----------------------
ATTR_ORDER = "order"
ATTR_SAMPLE_SHAPE = "sample_shape"
ATTR_POOLING = "pooling"
ATTR_CLASSIFIER_LAYER = "layer"


def layer_path(name: str) -> str:
    """HDF5 path of layer ``name``."""
    return f"{LAYERS}/{name}"


# --- report: the summary table ----------------------------------------------
COL_FILE = "file"
COL_SPLIT = "split"
COL_EPOCH = "epoch"
COL_MODEL = "model"
COL_LAYER = "layer"
COL_LAYER_ORDER = "layer_order"
COL_N_SAMPLES = "n_samples"
COL_N_CLASSES = "n_classes"
COL_DIM = "dim"
COL_EFFECTIVE_DEPTH = "ncc_effective_depth"

# --- report: the column registry ---------------------------------------------
# Every metric column, once: its table, Arrow type, family, where it applies, the
# plot's panel title and y label, a one-line meaning and its value at exact collapse.
# The tuples below, Parquet types, plot labels and the README check derive from it.
TABLE_SUMMARY, TABLE_CLASS, TABLE_PAIR = "summary", "class", "pair"
ANY_LAYER, CLASSIFIER_LAYER = "any layer", "classifier layer"


@dataclass(frozen=True)
class Column:
    """One report column: where it lives, its type and how people read it."""

    name: str
    family: str
    applies_to: str
    title: str
    ylabel: str
    meaning: str
    collapsed: str
    table: str = TABLE_SUMMARY
    arrow_type: str = "float64"
    compact: bool = False  # one of the few columns shown first to people (`nccli report`'s table)


METRICS: tuple[Column, ...] = (
    Column(
        "tr_sw",
        "nc1",
        ANY_LAYER,
        "Within-class variability",
        r"$\mathrm{tr}(\Sigma_W)$",
        "trace of Σ_W (scale-dependent)",
        "0",
    ),
    Column(
        "tr_sb",
        "nc1",
        ANY_LAYER,
        "Between-class variability",
        r"$\mathrm{tr}(\Sigma_B)$",
        "trace of Σ_B (scale-dependent)",
        "> 0",
    ),
    Column(
        "nc1",
        "nc1",
        ANY_LAYER,
        "NC1: within / between variability",
        r"$\mathrm{tr}(\Sigma_W \Sigma_B^{+}) / K$",
        "(1/K) tr(Σ_W Σ_B⁺): within- vs between-class variability (Papyan et al.)",
        "0",
        compact=True,
    ),
    Column(
        "nc1_tilde",
        "nc1",
        ANY_LAYER,
        "NC1 (Tirer): within / between",
        r"$\mathrm{tr}(\Sigma_W) / \mathrm{tr}(\Sigma_B)$",
        "tr Σ_W / tr Σ_B (Tirer et al.)",
        "0",
    ),
    Column(
        "cdnv",
        "nc1",
        ANY_LAYER,
        "CDNV: variance / class distance",
        r"mean of $(V_c + V_{c'}) / (2\Vert\mu_c - \mu_{c'}\Vert^2)$",
        "mean over class pairs of (V_c + V_c′)/(2‖μ_c − μ_c′‖²) (Galanti et al.)",
        "0",
        compact=True,
    ),
    Column(
        "nc1_dist_ratio",
        "nc1",
        ANY_LAYER,
        "Within-class distance ratio",
        r"mean $\Vert h_i - \mu_{y_i}\Vert$ / mean $\Vert h_i - \mu_G\Vert$",
        "mean distance of samples to their class mean over mean distance to the global mean (seed 002)",
        "0",
    ),
    Column(
        "nc2_equinorm",
        "nc2",
        ANY_LAYER,
        "NC2: equinorm of class means",
        r"std / mean of $\Vert\mu_c - \mu_G\Vert$",
        "coefficient of variation of ‖μ_c − μ_G‖",
        "0",
    ),
    Column(
        "nc2_equiangular",
        "nc2",
        ANY_LAYER,
        "NC2: equiangularity of class means",
        r"std of $\cos(\mu_c - \mu_G, \mu_{c'} - \mu_G)$",
        "std of the cosines between centred means",
        "0",
    ),
    Column(
        "nc2_maxangle",
        "nc2",
        ANY_LAYER,
        "NC2: angles vs the simplex ETF",
        r"mean of $|\cos + 1/(K-1)|$",
        "mean |cos + 1/(K−1)| over pairs of centred means",
        "0",
    ),
    Column(
        "nc2_etf",
        "nc2",
        ANY_LAYER,
        "NC2: distance to the simplex ETF",
        r"$\Vert G/\Vert G\Vert_F - P/\sqrt{K-1}\Vert_F$",
        "distance of the normalised Gram M̂M̂ᵀ of the centred means scaled to unit norm (M̂) to the simplex ETF",
        "0",
        compact=True,
    ),
    Column(
        "nc2_tirer",
        "nc2",
        ANY_LAYER,
        "NC2 (Tirer): Gram vs $\\rho P$",
        r"$\Vert MM^T - \rho P\Vert_F / \Vert MM^T\Vert_F$",
        "relative distance of the centred means' Gram MMᵀ to the best multiple ρP of the simplex ETF (Tirer et al.)",
        "0",
    ),
    Column(
        "gnc2_dist_var",
        "nc2",
        ANY_LAYER,
        "GNC2: spread of normalised distances",
        r"var of $\Vert\hat m_c - \hat m_{c'}\Vert$",
        "variance over pairs of the distances between normalised centred means (hyperspherical uniformity, Liu et al.)",
        "0",
    ),
    Column(
        "gnc2_log_var",
        "nc2",
        ANY_LAYER,
        "GNC2: spread of log distances",
        r"var of $\log(1/\Vert\hat m_c - \hat m_{c'}\Vert)$",
        "variance over pairs of log(1/distance) between normalised centred means (logarithmic kernel)",
        "0",
    ),
    Column(
        "w_equinorm",
        "w",
        CLASSIFIER_LAYER,
        "NC2: equinorm of classifier rows",
        r"std / mean of $\Vert w_c\Vert$",
        "coefficient of variation of the classifier rows' norms ‖w_c‖",
        "0",
    ),
    Column(
        "w_equiangular",
        "w",
        CLASSIFIER_LAYER,
        "NC2: equiangularity of classifier rows",
        r"std of $\cos(w_c, w_{c'})$",
        "std of the cosines between classifier rows (not centred)",
        "0",
    ),
    Column(
        "w_maxangle",
        "w",
        CLASSIFIER_LAYER,
        "NC2: classifier angles vs the simplex ETF",
        r"mean of $|\cos(w_c, w_{c'}) + 1/(K-1)|$",
        "mean |cos + 1/(K−1)| over pairs of classifier rows",
        "0",
    ),
    Column(
        "nc3_duality",
        "nc3",
        CLASSIFIER_LAYER,
        "NC3: self-duality, classifier vs means",
        r"$\Vert W/\Vert W\Vert_F - M/\Vert M\Vert_F\Vert_F$",
        "‖W/‖W‖ − M/‖M‖‖_F, classifier vs centred means (not squared)",
        "0",
        compact=True,
    ),
    Column(
        "nc3_etf",
        "nc3",
        CLASSIFIER_LAYER,
        "NC3: $WM^T$ vs the simplex ETF",
        r"$\Vert WM^T/\Vert WM^T\Vert_F - P/\sqrt{K-1}\Vert_F$",
        "distance of W M̂ᵀ (centred means scaled to unit norm, as in nc2_etf) to the simplex ETF",
        "0",
    ),
    Column(
        "nc3_tirer",
        "nc3",
        CLASSIFIER_LAYER,
        "NC3 (Tirer): $WM^T$ vs $\\tilde\\rho P$",
        r"$\Vert WM^T - \tilde\rho P\Vert_F / \Vert WM^T\Vert_F$",
        "relative distance of W Mᵀ to the best multiple ρ̃P, ρ̃ ≥ 0, of the simplex ETF (Tirer et al.)",
        "0",
    ),
    Column(
        "nc3_uniform_duality",
        "nc3",
        CLASSIFIER_LAYER,
        "UNC3: spread of classifier–mean cosines",
        r"var of $\cos(w_c, \mu_c - \mu_G)$",
        "variance over classes of cos(w_c, μ_c − μ_G) (uniform duality, Wu & Papyan)",
        "0",
    ),
    Column(
        "ncc_accuracy",
        "ncc",
        ANY_LAYER,
        "NCC error (nearest class mean)",
        "error = 1 − NCC accuracy",
        "accuracy of the nearest-class-centre rule",
        "1 on train",
        compact=True,
    ),
    Column(
        "clf_accuracy",
        "ncc",
        CLASSIFIER_LAYER,
        "Classifier error",
        "error = 1 − classifier accuracy",
        "accuracy of argmax(Wh + b)",
        "1 on train",
        compact=True,
    ),
    Column(
        "nc4_ncc_mismatch",
        "ncc",
        CLASSIFIER_LAYER,
        "NC4: classifier vs NCC disagreement",
        "fraction of samples",
        "fraction where classifier and NCC disagree",
        "0",
        compact=True,
    ),
    Column(
        "margin_min",
        "ncc",
        CLASSIFIER_LAYER,
        "Smallest logit margin",
        r"$\min_i q_i$",
        "smallest logit margin of the true class over the best other",
        "> 0",
    ),
    Column(
        "margin_mean",
        "ncc",
        CLASSIFIER_LAYER,
        "Mean logit margin",
        r"mean of $q_i$",
        "mean logit margin of the true class over the best other",
        "> 0",
    ),
    Column(
        "margin_normalized",
        "loss",
        CLASSIFIER_LAYER,
        "Normalised bias-free margin",
        r"$q_0 \cdot 2(K-1)\sqrt{n} / (\Vert W\Vert_F^2 + \Vert H\Vert_F^2)$",
        "smallest bias-free margin over its upper bound (ULPM, seed 002); ≤ 1 on balanced data",
        "1 at max margin, if zero-mean and no bias",
    ),
    Column(
        "norm_balance",
        "loss",
        CLASSIFIER_LAYER,
        "Norm balance",
        r"$\Vert W\Vert_F / \Vert H\Vert_F$",
        "‖W‖_F / ‖H‖_F, features not centred (seed 002)",
        "1 at max margin, if zero-mean and no bias",
    ),
    Column(
        "ce_loss",
        "loss",
        CLASSIFIER_LAYER,
        "Cross-entropy loss",
        r"mean of $-\log \mathrm{softmax}(Wh_i + b)_{y_i}$",
        "mean cross-entropy of the logits Wh + b",
        "→ 0",
    ),
    Column(
        "ce_excess",
        "loss",
        CLASSIFIER_LAYER,
        "Excess cross-entropy",
        r"$CE_0 - \log(1 + (K-1)e^{-K\alpha\beta/(K-1)})$",
        "bias-free cross-entropy over the optimum for the same feature and classifier norms (Pan)",
        "0 if zero-mean and no bias",
    ),
    Column(
        "snr_min",
        "snr",
        CLASSIFIER_LAYER,
        "SNR: smallest singular value",
        r"$\omega_{\min}$ of $\Sigma_W^{-1/2}M^T$",
        "smallest non-zero singular value of Σ_W^{−1/2}Mᵀ, --snr (Han et al.)",
        "→ ∞",
    ),
    Column(
        "snr_max",
        "snr",
        CLASSIFIER_LAYER,
        "SNR: largest singular value",
        r"$\omega_{\max}$ of $\Sigma_W^{-1/2}M^T$",
        "largest singular value of Σ_W^{−1/2}Mᵀ, --snr; snr_max/snr_min → 1 at NC2",
        "→ ∞, = snr_min",
    ),
    Column(
        "nc5_ood_orthogonality",
        "ood",
        ANY_LAYER,
        "NC5: class means vs the OOD mean",
        r"mean of $|\cos(\mu_c, \mu_{ood})|$",
        "mean |cos(μ_c, μ_ood)| with the --ood file's mean, not centred (Ammar et al.)",
        "0",
    ),
    Column(
        "intra_cos_min",
        "cosine",
        ANY_LAYER,
        "Within-class cosine, worst class",
        r"$\min_c$ intra$_c$",
        "smallest mean cosine between samples of a class (Pan)",
        "1",
    ),
    Column(
        "intra_cos_mean",
        "cosine",
        ANY_LAYER,
        "Within-class cosine, mean",
        r"mean of intra$_c$",
        "mean cosine between samples of a class, averaged over classes (Pan)",
        "1",
    ),
    Column(
        "inter_cos_max",
        "cosine",
        ANY_LAYER,
        "Between-class cosine, worst pair",
        r"$\max_{c<c'}$ inter$_{cc'}$",
        "largest mean cosine between samples of two classes (Pan)",
        "−1/(K−1) if zero-mean; ≥ 0 after ReLU",
    ),
    Column(
        "inter_cos_mean",
        "cosine",
        ANY_LAYER,
        "Between-class cosine, mean",
        r"mean of inter$_{cc'}$",
        "mean cosine between samples of two classes, over pairs (Pan)",
        "−1/(K−1) if zero-mean; ≥ 0 after ReLU",
    ),
    Column(
        "mse_loss",
        "mse",
        CLASSIFIER_LAYER,
        "MSE loss",
        r"$L(\tilde W)$",
        "MSE loss of the classifier, --mse (Han, Papyan & Donoho): mse_ls + mse_perp",
        "→ mse_ls",
    ),
    Column(
        "mse_ls",
        "mse",
        CLASSIFIER_LAYER,
        "MSE of the least-squares classifier",
        r"$L(\tilde W_{LS})$",
        "MSE loss of the least-squares classifier: mse_nc1 + mse_nc23",
        "→ mse_nc23",
    ),
    Column(
        "mse_perp",
        "mse",
        CLASSIFIER_LAYER,
        "MSE: distance to the central path",
        r"$L^{\perp}_{LS}$",
        "how far the classifier is from the least-squares one: mse_loss − mse_ls",
        "0",
    ),
    Column("mse_nc1", "mse", CLASSIFIER_LAYER, "MSE: NC1 term", r"$L_{NC1}$", "within-class (NC1) part of mse_ls", "0"),
    Column(
        "mse_nc23",
        "mse",
        CLASSIFIER_LAYER,
        "MSE: NC2/3 term",
        r"$L_{NC2/3}$",
        "between-class (NC2/3) part of mse_ls",
        "—",
    ),
)
METRIC_BY_NAME = {column.name: column for column in METRICS}
CLASS_COLUMNS: tuple[Column, ...] = (
    Column("n", "class", ANY_LAYER, "", "", "samples of the class", "—", TABLE_CLASS, "int64"),
    Column(
        "var",
        "class",
        ANY_LAYER,
        "",
        "",
        "V_c: mean squared distance of the class's features to its mean",
        "0",
        TABLE_CLASS,
    ),
    Column("mean_norm", "class", ANY_LAYER, "", "", "‖μ_c − μ_G‖", "equal", TABLE_CLASS),
    Column("intra_cos", "class", ANY_LAYER, "", "", "mean cosine between the class's samples", "1", TABLE_CLASS),
    Column(
        "ncc_recall",
        "class",
        ANY_LAYER,
        "",
        "",
        "fraction of the class the NCC rule gets right",
        "1 on train",
        TABLE_CLASS,
    ),
    Column(
        "clf_recall",
        "class",
        CLASSIFIER_LAYER,
        "",
        "",
        "fraction of the class the classifier gets right",
        "1 on train",
        TABLE_CLASS,
    ),
    Column("duality_cos", "class", CLASSIFIER_LAYER, "", "", "cos(w_c, μ_c − μ_G)", "1", TABLE_CLASS),
    Column("w_norm", "class", CLASSIFIER_LAYER, "", "", "‖w_c‖", "equal", TABLE_CLASS),
)
PAIR_COLUMNS: tuple[Column, ...] = (
    Column("cdnv", "pair", ANY_LAYER, "", "", "(V_c + V_c′)/(2‖μ_c − μ_c′‖²)", "0", TABLE_PAIR),
    Column("mean_cos", "pair", ANY_LAYER, "", "", "cos(μ_c − μ_G, μ_c′ − μ_G)", "−1/(K−1)", TABLE_PAIR),
    Column(
        "inter_cos", "pair", ANY_LAYER, "", "", "mean cosine between samples of the two classes", "−1/(K−1)", TABLE_PAIR
    ),
    Column("mean_dist", "pair", ANY_LAYER, "", "", "‖μ_c − μ_c′‖", "equal", TABLE_PAIR),
    Column("w_cos", "pair", CLASSIFIER_LAYER, "", "", "cos(w_c, w_c′)", "−1/(K−1)", TABLE_PAIR),
)


def _family(name: str) -> tuple[str, ...]:
    return tuple(column.name for column in METRICS if column.family == name)


NC1_METRICS = _family("nc1")
NC2_METRICS = _family("nc2")
NC3_METRICS = _family("nc3")
NCC_METRICS = _family("ncc")
COSINE_METRICS = _family("cosine")
MSE_METRICS = _family("mse")
W_METRICS = _family("w")
LOSS_METRICS = _family("loss")
SNR_METRICS = _family("snr")
OOD_METRICS = _family("ood")
OPT_IN_METRICS = MSE_METRICS + SNR_METRICS + OOD_METRICS  # null unless --mse, --snr, --ood
METRIC_COLUMNS = tuple(column.name for column in METRICS)
COMPACT_METRICS = tuple(column.name for column in METRICS if column.compact)

SUMMARY_KEY_COLUMNS = (
    COL_FILE,
    COL_SPLIT,
    COL_EPOCH,
    COL_MODEL,
    COL_LAYER,
    COL_LAYER_ORDER,
    COL_N_SAMPLES,
    COL_N_CLASSES,
    COL_DIM,
)
SUMMARY_COLUMNS = SUMMARY_KEY_COLUMNS + METRIC_COLUMNS + (COL_EFFECTIVE_DEPTH,)

# --- report: per-class and per-pair tables ----------------------------------
COL_CLASS = "class"
COL_CLASS_B = "class_b"
COL_CLASS_NAME = "class_name"
COL_CLASS_NAME_B = "class_name_b"
CLASS_METRICS = tuple(column.name for column in CLASS_COLUMNS)
PAIR_METRICS = tuple(column.name for column in PAIR_COLUMNS)

# Arrow types of the key columns; metric columns carry theirs in the registry.
KEY_TYPES = {
    COL_FILE: "string",
    COL_SPLIT: "string",
    COL_EPOCH: "int64",
    COL_MODEL: "string",
    COL_LAYER: "string",
    COL_LAYER_ORDER: "int64",
    COL_N_SAMPLES: "int64",
    COL_N_CLASSES: "int64",
    COL_DIM: "int64",
    COL_EFFECTIVE_DEPTH: "int64",
    COL_CLASS: "int64",
    COL_CLASS_B: "int64",
    COL_CLASS_NAME: "string",
    COL_CLASS_NAME_B: "string",
}
_COLUMN_TYPES = {**{c.name: c.arrow_type for c in (*METRICS, *CLASS_COLUMNS, *PAIR_COLUMNS)}, **KEY_TYPES}


def arrow_type_name(column: str) -> str:
    """The Arrow type of a report column ('float64', 'int64', 'string'); KeyError for a name no table has."""
    return _COLUMN_TYPES[column]


# --- report: Parquet key-value metadata -------------------------------------
META_VERSION = "nccli_version"
META_COMMAND = "command"
META_PROVENANCE = "provenance"
META_CONVENTIONS = "conventions"
META_WARNINGS = "warnings"

# --- feature file: written by `nccli extract`, ignored by readers ----------
ATTR_EXTRACT_OPTIONS = "extract_options"  # JSON of what determines the rows; `--resume` must match it
ATTR_PENDING_COMPRESSION = "pending_compression"  # FILE.partial only: the filter applied when the file is finished
ATTR_INIT_SEED = "init_seed"  # the seed a model built without weights was initialised from (`--init-seed`)
EXTRACT_OPTION_NETWORK = "network_sha256"  # key of ATTR_EXTRACT_OPTIONS: hash of the model's parameters and buffers
SKIPPED_INDEX = "skipped_index"  # int (S,): source-dataset indices of samples `--skip-unreadable` left out

# --- input array files read by `nccli extract` (.h5 datasets; .npz keys) ---
ARRAY_FILE_IMAGES = "images"
ARRAY_FILE_LABELS = "labels"
NPZ_IMAGES = "x"
NPZ_LABELS = "y"

# --- feature file: the provenance attributes one by one (PROVENANCE_ATTRS lists them all)
ATTR_WEIGHTS = "weights"
ATTR_CHECKPOINT = "checkpoint"
ATTR_CHECKPOINT_SHA256 = "checkpoint_sha256"
ATTR_DATASET = "dataset"
ATTR_TRANSFORM = "transform"
ATTR_COMMAND = "command"
ATTR_CREATED = "created"
ATTR_NCCLI_VERSION = "nccli_version"
ATTR_TORCH_VERSION = "torch_version"
ATTR_MODEL_LIBRARY = "model_library"  # the zoo a model came from and its version ("timm 1.0.31"); "" for own code

# --- sharded extraction under torchrun: one shard file per rank, an index over them (README) ---
SHARDS_FOLDER_SUFFIX = ".shards"  # FILE.h5 → FILE.shards/
SHARD_FILE_NAME = "rank-{rank:05d}-of-{ranks:05d}.h5"
SHARD_FILE_PATTERN = r"rank-(\d{5})-of-(\d{5})\.h5"  # matches SHARD_FILE_NAME
ATTR_SHARDS = "shards"  # index root attribute: the shard files, relative to the index's folder, in rank order
ATTR_SHARD_OFFSETS = "shard_offsets"  # index root attribute: first row of each shard in the index, then N
EXTRACT_OPTION_SHARD = "shard"  # key of ATTR_EXTRACT_OPTIONS in a shard: [rank, ranks, first row, end row]

# --- `nccli convert`: the keys it looks for when not told (first present wins), and what it records ---
CONVERT_FEATURES_KEYS = ("features", "feats", "x")
CONVERT_LABELS_KEYS = ("labels", "targets", "y")
CONVERT_WEIGHT_KEYS = ("weight", "W")
CONVERT_BIAS_KEYS = ("bias", "b")
CONVERT_LOGITS_KEYS = ("logits",)
ATTR_SOURCES = "sources"  # root attribute of a converted file: JSON list of the source files, as given
