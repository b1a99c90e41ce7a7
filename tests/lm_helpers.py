"""Tiny causal language models for the token-level tests: Hugging Face GPT-2 and Llama configs saved with
``save_pretrained``, a byte-level BPE tokenizer trained here from a few sentences, and a nanoGPT-style
network (``--arch lm_helpers:nano_gpt``) whose inference returns the last position's logits only."""

from pathlib import Path

import torch
from torch import nn

SENTENCES = [
    "the cat sat on the mat",
    "a dog ran in the park and the cat ran too",
    "the end of the story is near",
    "every token predicts the next one",
]
CONTEXT = 16


def trained_tokenizer():
    """A byte-level BPE tokenizer of about 60 tokens, with <eos>, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.train_from_iterator(SENTENCES, trainers.BpeTrainer(vocab_size=60, special_tokens=["<unk>", "<eos>"]))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", eos_token="<eos>")


def causal_lm(folder: Path, kind: str = "gpt2", tokenizer=None, seed: int = 0):
    """A 2-block GPT-2- or Llama-style causal LM of width 16 (context CONTEXT) saved to ``folder``; the model."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    vocabulary = len(tokenizer) if tokenizer is not None else 50
    special = {"bos_token_id": 1, "eos_token_id": 1}
    torch.manual_seed(seed)
    if kind == "gpt2":
        config = GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=vocabulary, n_positions=CONTEXT, **special)
        model = GPT2LMHeadModel(config)
    else:
        config = LlamaConfig(
            num_hidden_layers=2, hidden_size=16, num_attention_heads=2, num_key_value_heads=2, intermediate_size=32,
            vocab_size=vocabulary, max_position_embeddings=CONTEXT, **special,
        )  # fmt: skip
        model = LlamaForCausalLM(config)
    model.eval().save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return model


class NanoGPT(nn.Module):
    """nanoGPT's shape: token and position embeddings, blocks in ``transformer.h``, ``ln_f``, a tied ``lm_head``;
    without targets it returns the last position's logits only, as nanoGPT's inference does."""

    def __init__(self, vocabulary: int = 40, width: int = 16, blocks: int = 2, context: int = CONTEXT):
        super().__init__()
        self.config = type("Config", (), {"block_size": context})()
        self.transformer = nn.ModuleDict(
            {
                "wte": nn.Embedding(vocabulary, width),
                "wpe": nn.Embedding(context, width),
                "h": nn.ModuleList(
                    nn.TransformerEncoderLayer(width, 2, 32, dropout=0.0, batch_first=True) for _ in range(blocks)
                ),
                "ln_f": nn.LayerNorm(width),
            }
        )
        self.lm_head = nn.Linear(width, vocabulary, bias=False)
        self.lm_head.weight = self.transformer["wte"].weight

    def forward(self, ids: torch.Tensor, targets: torch.Tensor | None = None):
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.transformer["wte"](ids) + self.transformer["wpe"](positions)
        mask = nn.Transformer.generate_square_subsequent_mask(ids.shape[1], device=ids.device)
        for block in self.transformer["h"]:
            x = block(x, src_mask=mask, is_causal=True)
        x = self.transformer["ln_f"](x)
        return self.lm_head(x[:, [-1], :]), None


def nano_gpt() -> nn.Module:
    torch.manual_seed(3)
    return NanoGPT()
