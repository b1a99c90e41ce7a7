"""Every name in nccli's file formats, in one place.

The HDF5 feature file (``../shared/spec/feature-file.md``, format version 1) and
the Parquet report (``report.md``, ``metrics.md``). No other module spells
these strings.
"""

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

NC1_METRICS = ("tr_sw", "tr_sb", "nc1", "nc1_tilde", "cdnv")
NC2_METRICS = ("nc2_equinorm", "nc2_equiangular", "nc2_maxangle", "nc2_etf")
NC3_METRICS = ("nc3_duality", "nc3_etf")
NCC_METRICS = ("ncc_accuracy", "clf_accuracy", "nc4_ncc_mismatch", "margin_min", "margin_mean")
COSINE_METRICS = ("intra_cos_min", "intra_cos_mean", "inter_cos_max", "inter_cos_mean")
MSE_METRICS = ("mse_loss", "mse_ls", "mse_perp", "mse_nc1", "mse_nc23")
METRIC_COLUMNS = NC1_METRICS + NC2_METRICS + NC3_METRICS + NCC_METRICS + COSINE_METRICS + MSE_METRICS

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
CLASS_METRICS = ("n", "var", "mean_norm", "intra_cos", "ncc_recall", "clf_recall", "duality_cos")
PAIR_METRICS = ("cdnv", "mean_cos", "inter_cos", "mean_dist")

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

# --- sharded extraction under torchrun: one shard file per rank, an index over them (README) ---
SHARDS_FOLDER_SUFFIX = ".shards"  # FILE.h5 → FILE.shards/
SHARD_FILE_NAME = "rank-{rank:05d}-of-{ranks:05d}.h5"
SHARD_FILE_PATTERN = r"rank-(\d{5})-of-(\d{5})\.h5"  # matches SHARD_FILE_NAME
ATTR_SHARDS = "shards"  # index root attribute: the shard files, relative to the index's folder, in rank order
ATTR_SHARD_OFFSETS = "shard_offsets"  # index root attribute: first row of each shard in the index, then N
EXTRACT_OPTION_SHARD = "shard"  # key of ATTR_EXTRACT_OPTIONS in a shard: [rank, ranks, first row, end row]
