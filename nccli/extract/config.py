"""What `nccli extract` and `nccli layers` are asked to do: frozen configs and their closed choices.

Nothing here imports torch, so the CLI can build its options from these enums
and still start instantly.
"""

import enum
import os
from dataclasses import dataclass, field

from nccli.errors import UsageError

DEFAULT_ROOT = "data"
DEFAULT_BATCH_SIZE = 128
DEFAULT_MAX_DIM = 16384
DEFAULT_INPUT_SIZE = (3, 224, 224)
DEFAULT_WORKERS = (
    0 if (os.cpu_count() or 1) <= 2 else min(8, (os.cpu_count() or 1) // 2)
)  # 2 cores: workers would only slow the model
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# DATA of random images: nccli.extract.datasets.FAKE_PREFIX, spelled here too so that this module stays torch-free
FAKE_DATA_PREFIX = "fake:"
HF_PREFIX = "hf:"  # a Hugging Face hub id as MODEL (nccli.extract.hf_models.PREFIX)
HF_CONFIG_FILE = "config.json"  # what makes a folder a Hugging Face model
TOKEN_DATA_SUFFIXES = (".bin", ".npy", ".txt", ".jsonl")  # token ids and text (nccli.extract.tokens)


class Zoo(enum.StrEnum):
    """Where `nccli models` lists model names from: MODEL is the name with the zoo's prefix."""

    TORCHVISION = "torchvision"
    TIMM = "timm"
    HF = "hf"  # the image classifiers in the local Hugging Face cache


class Split(enum.StrEnum):
    """Which split of a named dataset to read (and the `split` attribute written)."""

    TRAIN = "train"
    TEST = "test"


class Normalization(enum.StrEnum):
    """How pixels scaled to [0, 1] are normalised when ``--mean``/``--std`` are not given (and no ``--weights``)."""

    NONE = "none"  # left in [0, 1]
    IMAGENET = "imagenet"  # ImageNet's mean and std (their averages for 1-channel images)


class MapPooling(enum.StrEnum):
    """How an (N, C, H, W) feature map becomes one row per sample."""

    AVG = "avg"
    MAX = "max"
    FLATTEN = "flatten"


class TokenPooling(enum.StrEnum):
    """How an (N, T, D) token sequence becomes one row per sample; `auto` is `cls` for models with a class token."""

    AUTO = "auto"
    CLS = "cls"
    MEAN = "mean"
    MAX = "max"
    FLATTEN = "flatten"


class Precision(enum.StrEnum):
    """Autocast precision of the forward pass."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


class StorageDtype(enum.StrEnum):
    """Float width of the features stored in the file."""

    FLOAT32 = "float32"
    FLOAT16 = "float16"


class Compression(enum.StrEnum):
    """HDF5 compression filter of the feature datasets."""

    NONE = "none"
    LZF = "lzf"
    GZIP = "gzip"


@dataclass(frozen=True)
class ModelOptions:
    """How to turn a MODEL argument into an ``nn.Module``.

    ``init_seed`` seeds the random initialisation of a torchvision model built without ``weights``, so that
    the same command (and ``--resume``, and every torchrun process) builds the same network.
    """

    arch: str | None = None
    weights: str | None = None
    num_classes: int | None = None
    trust_checkpoint: bool = False
    init_seed: int = 0

    def __post_init__(self):
        _check_positive("--num-classes", self.num_classes)
        if self.init_seed < 0:
            raise UsageError(f"--init-seed must be 0 or more, got {self.init_seed}")


class TokenDtype(enum.StrEnum):
    """The width of the ids in a headerless ``.bin`` token file (nanoGPT writes uint16)."""

    UINT16 = "uint16"
    UINT32 = "uint32"


@dataclass(frozen=True)
class TokenOptions:
    """How a language model reads token DATA (:mod:`nccli.extract.tokens`): windows of ``seq_len`` tokens
    (default: the model's context) every ``stride`` (default: ``seq_len``), the first ``max_tokens`` rows,
    the ``.bin`` id width and the ``.jsonl`` text field."""

    seq_len: int | None = None
    stride: int | None = None
    max_tokens: int | None = None
    token_dtype: TokenDtype | None = None
    text_field: str = "text"

    def __post_init__(self):
        for option, value in (
            ("--seq-len", self.seq_len),
            ("--stride", self.stride),
            ("--max-tokens", self.max_tokens),
        ):
            _check_positive(option, value)
        if self.token_dtype is not None:
            object.__setattr__(self, "token_dtype", _choice("token_dtype", TokenDtype, self.token_dtype))


@dataclass(frozen=True)
class ExtractConfig:
    """Everything `extract_features` needs; defaults match the CLI's.

    ``models`` holds model names, checkpoint paths or globs (several
    checkpoints make ``out`` a directory). Preprocessing is never guessed:
    without ``model.weights`` (whose own transforms are used), give either
    ``mean`` and ``std`` (the statistics the model was trained with) or
    ``normalize`` (``none``: pixels in [0, 1]; ``imagenet``: ImageNet's
    statistics, averaged for 1-channel images); only ``fake:N`` data defaults
    to ``none``. ``layers`` of ``None`` means the default picks (top-level
    blocks and the classifier input).
    ``skip_unreadable`` leaves out samples whose image cannot be decoded and
    records their indices in the file, instead of stopping at the first.
    """

    models: tuple[str, ...]
    data: str
    out: str
    model: ModelOptions = field(default_factory=ModelOptions)
    epoch: int | None = None
    root: str = DEFAULT_ROOT
    split: Split = Split.TRAIN
    download: bool = False
    resize: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    normalize: Normalization | None = None
    channels: int | None = None
    per_class: int | None = None
    limit: int | None = None
    seed: int = 0
    layers: tuple[str, ...] | None = None
    pool: MapPooling = MapPooling.AVG
    token_pool: TokenPooling = TokenPooling.AUTO
    max_dim: int = DEFAULT_MAX_DIM
    device: str = "auto"
    precision: Precision = Precision.FP32
    batch_size: int = DEFAULT_BATCH_SIZE
    workers: int = DEFAULT_WORKERS
    dtype: StorageDtype = StorageDtype.FLOAT32
    compression: Compression = Compression.NONE
    skip_unreadable: bool = False
    resume: bool = False
    overwrite: bool = False
    progress: bool = False
    command: str | None = None
    tokens: TokenOptions = field(default_factory=TokenOptions)

    def __post_init__(self):
        if isinstance(self.models, str):
            object.__setattr__(self, "models", (self.models,))
        for name, choices in _CHOICES.items():  # plain strings from Python callers become the enums
            if name not in _OPTIONAL_CHOICES or getattr(self, name) is not None:
                object.__setattr__(self, name, _choice(name, choices, getattr(self, name)))
        if not self.models:
            raise UsageError("no MODEL given")
        if self.resume and self.overwrite:
            raise UsageError("--resume continues a partial file and --overwrite starts over; pass only one")
        for option, value in (
            ("--resize", self.resize),
            ("--per-class", self.per_class),
            ("--limit", self.limit),
            ("--max-dim", self.max_dim),
            ("--batch-size", self.batch_size),
        ):
            _check_positive(option, value)
        if self.workers < 0:
            raise UsageError(f"--workers must be 0 or more, got {self.workers}")
        if self.channels not in (None, 1, 3):
            raise UsageError(f"--channels must be 1 or 3, got {self.channels}")
        for option, values in (("--mean", self.mean), ("--std", self.std)):
            if values is not None and len(values) not in (1, 3):
                raise UsageError(f"{option} takes 1 or 3 comma-separated numbers, got {len(values)}")
        if self.std is not None and any(value <= 0 for value in self.std):
            raise UsageError(f"--std must be positive, got {','.join(map(str, self.std))}")
        if is_token_data(self.data):
            self._check_image_options_unset()
        else:
            self._check_normalization()

    def _check_image_options_unset(self) -> None:
        """Token DATA has no images: an image option given with it is a mistake, said in one line."""
        given = [
            option
            for option, value, default in (
                ("--resize", self.resize, None),
                ("--mean", self.mean, None),
                ("--std", self.std, None),
                ("--normalize", self.normalize, None),
                ("--channels", self.channels, None),
                ("--per-class", self.per_class, None),
                ("--limit", self.limit, None),
                ("--skip-unreadable", self.skip_unreadable, False),
                ("--download", self.download, False),
            )
            if value != default
        ]
        if given:
            raise UsageError(
                f"{', '.join(given)}: for images, but '{self.data}' is token DATA for a language model "
                "(--max-tokens keeps the first rows)"
            )

    def _check_normalization(self) -> None:
        """Refuse to guess how the images are normalised (a wrong guess gives plausible, wrong features).

        An explicit choice replaces the model's own preprocessing; without one, pretrained weights and Hugging
        Face models bring theirs (a Hugging Face folder without an image processor is refused when it is built).
        """
        given = [option for option, value in (("--mean", self.mean), ("--std", self.std)) if value is not None]
        if self.normalize is not None and given:
            raise UsageError(
                f"--normalize {self.normalize} and {'/'.join(given)} both say how to normalise the images; "
                "pass --mean and --std, or --normalize"
            )
        if len(given) == 1:
            missing = "--std" if given == ["--mean"] else "--mean"
            raise UsageError(
                f"{given[0]} without {missing}: pass both, the per-channel statistics the model was trained with"
            )
        if given or self.normalize is not None or self.model.weights or any(map(is_hugging_face, self.models)):
            return
        if str(self.data).startswith(FAKE_DATA_PREFIX):  # random pixels: no statistics to match
            object.__setattr__(self, "normalize", Normalization.NONE)
            return
        raise UsageError(
            f"say how to normalise the images of '{self.data}': --mean M --std S (the statistics the model was "
            "trained with), --normalize none (pixels in [0, 1]) or --normalize imagenet (ImageNet's mean and std)"
        )


def is_token_data(data: str) -> bool:
    """DATA a language model reads: token ids (``.bin``, ``.npy``), text (``.txt``, ``.jsonl``), or a folder saved by
    Hugging Face ``datasets`` (an image folder has class subfolders instead)."""
    from nccli.extract.saved_datasets import is_datasets_folder  # pyarrow: not imported when the CLI starts

    return str(data).endswith(TOKEN_DATA_SUFFIXES) or is_datasets_folder(str(data))


def is_hugging_face(model: str) -> bool:
    """A Hugging Face MODEL: ``hf:ORG/NAME``, or a folder holding config.json."""
    return model.startswith(HF_PREFIX) or os.path.isfile(os.path.join(model, HF_CONFIG_FILE))


_CHOICES = {
    "split": Split,
    "pool": MapPooling,
    "token_pool": TokenPooling,
    "precision": Precision,
    "dtype": StorageDtype,
    "compression": Compression,
    "normalize": Normalization,
}
_OPTIONAL_CHOICES = {"normalize"}  # None: not chosen


def _choice(name: str, choices: type[enum.StrEnum], value) -> enum.StrEnum:
    if value not in {choice.value for choice in choices}:
        allowed = ", ".join(choice.value for choice in choices)
        raise UsageError(f"--{name.replace('_', '-')} must be one of {allowed}, got '{value}'")
    return choices(value)


def _check_positive(option: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise UsageError(f"{option} must be a positive integer, got {value}")
