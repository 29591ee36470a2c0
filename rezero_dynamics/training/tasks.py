"""Training tasks: what a batch is, the loss, the validation metric and the Jacobian probe.

* ``LanguageModelTask``: next-character prediction with ``CharTransformerLM``; the metric
  is validation bits per character (lower is better).
* ``ClassificationTask``: image classification with a ``DeepMLP`` or a ``CifarResNet``;
  the metric is validation accuracy (higher is better).

``probe`` returns the block stack and a fixed input batch for Jacobian spectra during
training: embeddings in, hidden states out, as in the ReZero paper's analysis.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..data.images import ImageDataset
from ..data.text import CharCorpus
from ..models import CharTransformerLM, CifarResNet, DeepMLP
from .metrics import LN2

if TYPE_CHECKING:
    from .loop import TrainConfig


@contextlib.contextmanager
def evaluation_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode (no dropout) and restore every submodule's flag on exit."""
    saved = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in saved:
            module.training = training


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a host tensor to ``device``; to CUDA through pinned memory without blocking the host."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def sample_windows(tokens: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """Draw ``batch_size`` windows of ``seq_len + 1`` consecutive tokens; (B, T + 1) int64."""
    starts = torch.randint(0, tokens.numel() - seq_len, (batch_size,), generator=generator)
    return tokens[starts[:, None] + torch.arange(seq_len + 1)]


class LanguageModelTask:
    """Character-level language modelling on a ``CharCorpus``."""

    metric = "val_bpc"
    lower_is_better = True

    def __init__(self, corpus: CharCorpus, config: "TrainConfig") -> None:
        for split in ("train", "validation"):
            if corpus.split(split).numel() <= config.seq_len + 1:
                raise ValueError(
                    f"the {split} split of {corpus.name} has {corpus.split(split).numel()} tokens, too "
                    f"few for seq_len={config.seq_len}; use a shorter seq_len or a longer corpus"
                )
        self.corpus = corpus
        self.config = config

    def build_model(self) -> CharTransformerLM:
        c = self.config
        return CharTransformerLM(
            len(self.corpus.vocabulary), c.d_model, c.depth, heads=c.heads, d_ff=c.d_ff,
            variant=c.variant, max_len=c.seq_len, dropout=c.dropout, alpha_init=c.alpha_init,
        )

    def train_batch(self, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        return to_device(sample_windows(self.corpus.train, self.config.batch_size, self.config.seq_len, generator), device)

    def loss(self, model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy in nats, a 0-dim tensor."""
        logits = model(batch[:, :-1])  # (B, T, V)
        return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device) -> float:
        """Mean validation bits per character over ``eval_batches`` fixed windows, in eval mode."""
        c = self.config
        generator = torch.Generator().manual_seed(c.seed + 1)
        total = torch.zeros((), device=device)
        with evaluation_mode(model):
            for _ in range(c.eval_batches):
                batch = sample_windows(self.corpus.validation, c.batch_size, c.seq_len, generator)
                total += self.loss(model, to_device(batch, device))
        return (total / c.eval_batches / LN2).item()

    def probe(self, model: CharTransformerLM, num_inputs: int, tokens: int) -> tuple[nn.Module, torch.Tensor]:
        """Return the encoder and fixed validation embeddings (num_inputs, tokens, d_model)."""
        generator = torch.Generator().manual_seed(self.config.seed + 2)
        windows = sample_windows(self.corpus.validation, num_inputs, tokens - 1, generator)
        device = next(model.parameters()).device
        with torch.no_grad():
            return model.encoder, model.embed(windows.to(device))


IMAGE_SHAPES: dict[str, tuple[int, int, int]] = {"digits": (1, 8, 8), "cifar10": (3, 32, 32)}
"""(C, H, W) of each image data set, whose images are stored flattened."""


class ClassificationTask:
    """Classification of flattened images with a deep MLP or a CIFAR ResNet."""

    metric = "val_accuracy"
    lower_is_better = False

    def __init__(self, dataset: ImageDataset, config: "TrainConfig") -> None:
        self.dataset = dataset
        self.config = config

    def build_model(self) -> DeepMLP | CifarResNet:
        c = self.config
        if c.classifier_model == "resnet":
            shape = IMAGE_SHAPES[c.data]
            return CifarResNet(
                c.depth, variant=c.variant, num_classes=self.dataset.num_classes, in_channels=shape[0],
                image_shape=shape, alpha_init=c.alpha_init,
            )
        return DeepMLP(
            c.width, c.depth, activation=c.activation, variant=c.variant, init=c.init,
            sigma_w=c.sigma_w, norm=c.norm, alpha_init=c.alpha_init,
            in_features=self.dataset.num_features, out_features=self.dataset.num_classes,
        )

    def train_batch(self, generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        features, labels = self.dataset.train
        index = torch.randint(0, len(labels), (self.config.batch_size,), generator=generator)
        return to_device(features[index], device), to_device(labels[index], device)

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        features, labels = batch
        return nn.functional.cross_entropy(model(features), labels)

    @torch.no_grad()
    def evaluate(self, model: nn.Module, device: torch.device) -> float:
        """Accuracy on the whole validation split, in [0, 1]."""
        features, labels = self.dataset.validation
        correct = torch.zeros((), device=device)
        with evaluation_mode(model):
            for start in range(0, len(labels), 1024):
                logits = model(to_device(features[start : start + 1024], device))
                correct += (logits.argmax(dim=-1) == to_device(labels[start : start + 1024], device)).sum()
        return (correct / len(labels)).item()

    def probe(self, model: DeepMLP | CifarResNet, num_inputs: int, tokens: int) -> tuple[nn.Module, torch.Tensor]:
        """Return the block stack and the hidden inputs of the first validation images."""
        device = next(model.parameters()).device
        images = self.dataset.validation[0][:num_inputs].to(device)
        with torch.no_grad():
            if isinstance(model, CifarResNet):
                with evaluation_mode(model):  # the stem's batch norm uses running statistics
                    return model.stack, model.embed(images)
            return model.stack, model.input_layer(images)
