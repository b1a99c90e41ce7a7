"""Model zoos without a network: a Hugging Face cache laid out in a test folder, and tiny Hugging Face image
classifiers saved as ``save_pretrained`` writes them."""

from pathlib import Path

import pytest
import torch

SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"  # a commit hash, as the hub names snapshot folders


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face hub cache that the hub client (and so timm and transformers) reads."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return cache


def cached_repo(cache: Path, repo_id: str) -> Path:
    """The snapshot folder of ``repo_id`` in ``cache`` (created, with refs/main pointing at it): put files in it."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(SNAPSHOT)
    snapshot = repo / "snapshots" / SNAPSHOT
    snapshot.mkdir(parents=True)
    return snapshot


def tiny_vit_classifier(folder: Path, classes: int = 5, weights: bool = True, processor: bool = True):
    """A ViTForImageClassification for 32×32 images (2 layers of width 32) saved to ``folder``; the model."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=classes,
        id2label={index: f"kind {index}" for index in range(classes)},
        label2id={f"kind {index}": index for index in range(classes)},
    )
    torch.manual_seed(1)
    model = ViTForImageClassification(config).eval()
    if weights:
        model.save_pretrained(folder)
    else:
        folder.mkdir(parents=True, exist_ok=True)
        config.save_pretrained(folder)
    if processor:
        size = {"height": 32, "width": 32}
        ViTImageProcessor(size=size, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3]).save_pretrained(folder)
    return model
