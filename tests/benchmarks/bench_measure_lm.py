"""`nccli measure` on a causal language model beside a plain transformers forward loop over the same tokens.

Run from the repository root (a script, not a pytest test)::

    python tests/benchmarks/bench_measure_lm.py                          # CPU: the speed ratio at 10⁵ tokens
    python tests/benchmarks/bench_measure_lm.py --vocabulary 4096 --tokens 10000 --rss 100000 1000000
                                                               # peak RSS at 10⁵ and 10⁶ tokens
    python tests/benchmarks/bench_measure_lm.py --device cuda --tokens 1000000   # the GPU figure

It saves a small random GPT-2 (``--layers`` blocks of width ``--width``, context ``--seq-len``) whose
vocabulary is GPT-2's (50 257 tokens: K = the full vocabulary, every row of the LM head a class) and a
stream of random token ids as nanoGPT's ``.bin``, then times

* forward: ``model(ids)`` over the same non-overlapping windows, in batches, under ``inference_mode``
  (logits computed, nothing kept) — what any tool must at least spend;
* measure: ``nccli measure`` end to end — loading, two forward passes with hooks on every block and the
  final norm, and analyze's accumulators and metrics at K = 50 257 over every layer;

and prints tokens/s and their ratio (target: measure ≥ 0.45 × forward, two passes at ≥ 0.9× each).
With ``--rss N...`` it also runs ``nccli measure`` in a fresh process per token count and prints its peak
RSS (``ru_maxrss`` of the child): the rows are never held, so it should stay flat in the token count.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

VOCABULARY = 50_257  # GPT-2's: the default


def save_model(folder: str, layers: int, width: int, seq_len: int, vocabulary: int = VOCABULARY) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=layers, n_embd=width, n_head=max(1, width // 64), vocab_size=vocabulary, n_positions=seq_len
    )
    GPT2LMHeadModel(config).eval().save_pretrained(folder)


def forward_tokens_per_second(folder: str, ids: np.ndarray, seq_len: int, batch: int, device: str) -> float:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval().to(device)
    model.config.use_cache = False
    windows = torch.from_numpy(ids[: (len(ids) - 1) // seq_len * seq_len].astype(np.int64)).view(-1, seq_len)
    with torch.inference_mode():
        model(windows[:batch].to(device))  # untimed: start-up
        start = time.perf_counter()
        for first in range(0, len(windows), batch):
            model(windows[first : first + batch].to(device))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
    return windows.numel() / (time.perf_counter() - start)


def token_ids(vocabulary: int, count: int, zipf: bool) -> np.ndarray:
    """``count`` random ids: uniform over the vocabulary (every class present: the worst case for pass 2's K·d
    decisions), or with text's Zipf frequencies (most of a large vocabulary absent from 10⁵ tokens)."""
    rng = np.random.default_rng(0)
    if not zipf:
        return rng.integers(0, vocabulary, size=count, dtype=np.uint32)
    weights = 1.0 / np.arange(1, vocabulary + 1)
    return rng.choice(vocabulary, size=count, p=weights / weights.sum()).astype(np.uint32)


def measure_command(folder: str, data: str, out: str, args: argparse.Namespace, tokens: int) -> list:
    return [
        sys.executable, "-m", "nccli", "measure", folder, data, "--token-dtype", "uint32",
        "--seq-len", str(args.seq_len), "--batch-size", str(args.batch_size), "--device", args.device,
        "--max-tokens", str(tokens), *args.measure_options.split(), "--out", out,
    ]  # fmt: skip


def run_measure(command: list) -> tuple[float, int]:
    """Seconds and peak RSS (bytes) of one ``nccli measure`` process, run under a fresh parent so that the peak
    is its own (``ru_maxrss`` of children is the largest of all a process has waited for)."""
    parent = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", parent, *command], check=True, capture_output=True, text=True)
    return time.perf_counter() - start, int(done.stdout.split()[-1]) * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=100_000, help="token rows of the speed comparison")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16, help="windows per forward pass")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--vocabulary", type=int, default=VOCABULARY, help="classes (GPT-2's by default)")
    parser.add_argument("--rss", type=int, nargs="*", default=[], help="token counts whose peak RSS to print")
    parser.add_argument(
        "--zipf", action="store_true", help="ids drawn as text has them (Zipf, P(rank r) ∝ 1/r) instead of uniformly"
    )
    parser.add_argument(
        "--measure-options", default="", help="more options of nccli measure, e.g. '--top-classes 1000'"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder, data = os.path.join(scratch, "gpt"), os.path.join(scratch, "ids.bin")
        save_model(folder, args.layers, args.width, args.seq_len, args.vocabulary)
        longest = max([args.tokens, *args.rss]) + 1
        token_ids(args.vocabulary, longest, args.zipf).tofile(data)
        ids = np.fromfile(data, dtype=np.uint32)[: args.tokens + 1]
        shape = f"{args.layers} blocks, width {args.width}, vocabulary {args.vocabulary}, windows of {args.seq_len}"
        present = len(np.unique(ids[1:]))
        print(f"GPT-2 config: {shape}; {'Zipf' if args.zipf else 'uniform'} ids, {present} classes present")
        print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, device {args.device}")
        forward = forward_tokens_per_second(folder, ids, args.seq_len, args.batch_size, args.device)
        out = os.path.join(scratch, "r.parquet")
        command = measure_command(folder, data, out, args, args.tokens)
        seconds, peak = run_measure(command)
        measured = args.tokens / seconds
        print(
            f"{args.tokens} tokens: forward {forward:,.0f} tokens/s; measure {measured:,.0f} tokens/s "
            f"({seconds:.1f} s, peak RSS {peak / 2**20:,.0f} MiB); ratio {measured / forward:.3f} (target ≥ 0.45)"
        )
        for tokens in args.rss:
            command = measure_command(folder, data, out, args, tokens)
            seconds, peak = run_measure(command)
            print(f"peak RSS at {tokens:,} tokens: {peak / 2**20:,.0f} MiB ({seconds:.1f} s)")


if __name__ == "__main__":
    main()
