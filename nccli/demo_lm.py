"""``nccli demo --lm``: token-level collapse in a tiny causal language model trained here, offline, on the CPU.

Text comes from a small bundled grammar (:data:`GRAMMAR`, sentences drawn with a fixed seed: a determiner,
one of ten subjects, one of its two predicates), a word-level tokenizer is built from its words, and a
2-block GPT-2 of width 64 is trained on it, saved (with the tokenizer, as ``save_pretrained`` writes it) at
a few steps. Each checkpoint is measured over the training
text and over held-out text of the same grammar with :func:`~nccli.analyze.model_runs.measure_model`, the
code path of ``nccli measure``: every position a row, labelled with the next word, K = the vocabulary. One
report, and the figures of :mod:`nccli.report.plots` over the training steps.

What a tiny model on a toy grammar shows, and what it does not: most words of a sentence follow from the
previous ones, and there the rows of a class (the next word) gather; but a sentence's first word, its subject
and its predicate are choices, and a context that allows several next words gives one row to each of them, so
within-class variability cannot vanish — as in real language models, whose collapse is partial (Wu & Papyan
2024). The numbers are one small model's on a toy language, not a law.
"""

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nccli import schema
from nccli.errors import UsageError

SUBJECTS = {  # each subject has two predicates; the words of a predicate follow one another for sure
    "cat": (("chases", "the", "mouse"), ("sleeps", "on", "the", "mat")),
    "dog": (("fetches", "the", "ball"), ("barks", "at", "the", "mailman")),
    "bird": (("sings", "in", "the", "tree"), ("eats", "the", "seeds")),
    "child": (("reads", "a", "book"), ("plays", "in", "the", "garden")),
    "teacher": (("writes", "on", "the", "board"), ("grades", "the", "tests")),
    "farmer": (("feeds", "the", "cows"), ("drives", "the", "tractor")),
    "baker": (("bakes", "fresh", "bread"), ("sells", "sweet", "cakes")),
    "sailor": (("sails", "the", "boat"), ("ties", "a", "knot")),
    "painter": (("paints", "the", "wall"), ("mixes", "bright", "colours")),
    "doctor": (("visits", "the", "patient"), ("writes", "a", "note")),
}
GRAMMAR = {  # a probabilistic context-free grammar: each right-hand side equally likely
    "S": [["DET", f"NP_{subject}", "."] for subject in SUBJECTS],
    "DET": [["the"], ["a"]],
    **{
        f"NP_{subject}": [[subject, *predicate] for predicate in predicates] for subject, predicates in SUBJECTS.items()
    },
}
END = "<eos>"
STEPS = (1, 10, 50, 200, 800)  # checkpoints, by training step
CONTEXT = 32
TRAIN_SENTENCES, TEST_SENTENCES = 4000, 1000
MEASURED_TOKENS = 20_000
SPLITS = ("train", "test")
# NC1 as tr(Σ_W)/tr(Σ_B): nc1's Σ_B⁺ is ruled by the tiny eigenvalues of next-word classes whose contexts coincide
FIGURE_METRICS = (
    "nc1_tilde", "cdnv", "nc2_etf", "gnc2_log_var", "nc3_duality", "nc3_uniform_duality", "nc4_ncc_mismatch",
)  # fmt: skip


@dataclass(frozen=True)
class LanguageDemoConfig:
    """``out``: folder for the checkpoints, token files, report and figures (figures default ``out/figures``);
    ``steps``: the training steps to save and measure."""

    out: str
    figures: str | None = None
    device: str = "auto"
    show_progress: bool = False
    steps: tuple[int, ...] = STEPS


@dataclass
class LanguageDemoResult:
    report: Path
    figures: list[Path]
    summary: list[dict] = field(default_factory=list)


def sentences(count: int, seed: int) -> list[list[str]]:
    """``count`` sentences of :data:`GRAMMAR`, drawn with ``seed``."""
    rng = random.Random(seed)

    def expand(symbol: str) -> list[str]:
        if symbol not in GRAMMAR:
            return [symbol]
        return [word for part in rng.choice(GRAMMAR[symbol]) for word in expand(part)]

    return [expand("S") for _ in range(count)]


def vocabulary() -> list[str]:
    """Every word of the grammar, then the end-of-text token."""
    words = {word for rules in GRAMMAR.values() for rule in rules for word in rule if word not in GRAMMAR}
    return sorted(words) + [END]


def run_language_demo(config: LanguageDemoConfig) -> LanguageDemoResult:
    """Train, checkpoint, measure every checkpoint on train and held-out text, report and plot."""
    from nccli.analyze.model_runs import MeasureConfig, measure_model
    from nccli.analyze.outputs import write_report
    from nccli.extract import ExtractConfig, TokenOptions
    from nccli.extract.extras import require
    from nccli.report.plots import plot_report

    require("transformers", "nccli demo --lm")
    if not config.steps or min(config.steps) < 1:
        raise UsageError(f"the demo's training steps must be positive, got {config.steps}")
    out = Path(config.out)
    words = vocabulary()
    ids = {word: index for index, word in enumerate(words)}
    streams = {}
    for split, count, seed in (("train", TRAIN_SENTENCES, 0), ("test", TEST_SENTENCES, 1)):
        tokens = [ids[word] for sentence in sentences(count, seed) for word in [*sentence, END]]
        streams[split] = out / f"{split}.npy"
        streams[split].parent.mkdir(parents=True, exist_ok=True)
        np.save(streams[split], np.asarray(tokens, dtype=np.int64))
    folders = _train(out / "checkpoints", np.load(streams["train"]), words, config.steps, config.show_progress)
    summary = []
    for step, folder in folders.items():
        for split in SPLITS:
            source = ExtractConfig(
                models=(str(folder),),
                data=str(streams[split]),
                out="",
                epoch=step,
                split=split,
                device=config.device,
                batch_size=64,
                progress=config.show_progress,
                tokens=TokenOptions(seq_len=CONTEXT, max_tokens=MEASURED_TOKENS),
            )
            summary.append(measure_model(MeasureConfig(source)))
    result = summary[0]
    for later in summary[1:]:
        result.summary.extend(later.summary)
        result.provenance.update(later.provenance)
    report = out / "report.parquet"
    write_report(result, report, "nccli demo --lm")
    figures = plot_report(report, config.figures or out / "figures", metrics=FIGURE_METRICS, kind="epochs")
    return LanguageDemoResult(report, figures, result.summary)


def _train(folder: Path, tokens: np.ndarray, words: list[str], steps: tuple[int, ...], progress: bool) -> dict:
    """A 2-block GPT-2 trained on ``tokens`` (AdamW, windows of CONTEXT + 1), saved at each of ``steps``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from nccli.progress import progress_bar

    word_level = Tokenizer(models.WordLevel({word: index for index, word in enumerate(words)}, unk_token=END))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, eos_token=END, unk_token=END)
    end = words.index(END)
    config = GPT2Config(
        n_layer=2, n_embd=64, n_head=4, n_positions=CONTEXT, vocab_size=len(words), bos_token_id=end, eos_token_id=end
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a model this small trains fastest on one thread (the others only wait)
    windows = torch.from_numpy(tokens[: len(tokens) // (CONTEXT + 1) * (CONTEXT + 1)]).view(-1, CONTEXT + 1)
    generator = torch.Generator().manual_seed(0)
    saved = {}
    with progress_bar(progress, "train", max(steps), "steps") as advance:
        for step in range(1, max(steps) + 1):
            batch = windows[torch.randint(len(windows), (32,), generator=generator)]
            model.train()
            loss = model(batch[:, :-1], labels=batch[:, :-1]).loss  # transformers shifts the labels itself
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            advance(1)
            if step in steps:
                saved[step] = folder / f"step_{step}"
                model.eval().save_pretrained(saved[step])
                tokenizer.save_pretrained(saved[step])
    torch.set_num_threads(threads)
    return saved


def classifier_rows(summary: list[dict]) -> list[dict]:
    """The rows of the final norm (the LM head's input), by split then step."""
    rows = [
        row for row in summary if row.get("clf_accuracy") is not None and row["clf_accuracy"] == row["clf_accuracy"]
    ]
    return sorted(rows, key=lambda row: (SPLITS.index(row[schema.COL_SPLIT]), row[schema.COL_EPOCH]))
