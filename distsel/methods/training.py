"""The proxy LM's model and its one training loop, shared by the proxy (distsel.methods.proxy)
and the mixture-search trials (distsel.methods.mixture.trials).

Llama — Touvron et al., "LLaMA: Open and Efficient Foundation Language Models" (2023): pre-norm
decoder (RMSNorm), rotary positions, SwiGLU MLP; here with tied input/output embeddings.

Training minimises next-token cross-entropy with AdamW at lr · learning_rate_factor(step),
gradients clipped to norm 1, in bfloat16 autocast on a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM

    from distsel.core.config import ProxyConfig

# Warm-up lasts a tenth of the steps, at most this many.
MAX_WARMUP = 1000


def default_intermediate(hidden: int) -> int:
    """SwiGLU width with the parameters of a 4·hidden MLP: 8/3 · hidden, rounded up to a
    multiple of 8."""
    return 8 * math.ceil(8 * hidden / 3 / 8)


def build_proxy(config: ProxyConfig, vocab_size: int) -> LlamaForCausalLM:
    """A freshly initialised Llama with tied embeddings; with V = vocab_size, h = hidden,
    I = intermediate and L = layers, its parameter count is

        V·h + L·(4h² + 3h·I + 2h) + h

    (embeddings; per layer q/k/v/o projections, gate/up/down MLP and two RMSNorms; final norm).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    llama = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=config.hidden,
        intermediate_size=config.intermediate or default_intermediate(config.hidden),
        num_hidden_layers=config.layers,
        num_attention_heads=config.heads,
        num_key_value_heads=config.heads,
        max_position_embeddings=config.max_length,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(llama)


def learning_rate_factor(step: int, warmup: int, steps: int) -> float:
    """Multiplier of the peak rate at (0-based) `step`: (step + 1) / W during the W warm-up steps,
    then cosine decay to 10 %: 0.1 + 0.9 · ½ (1 + cos(π · (step − W) / (S − W)))."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(model: torch.nn.Module, config: ProxyConfig) -> torch.optim.Optimizer:
    """AdamW, β = (0.9, 0.95), weight decay 0.1 on matrices only (not on norms)."""
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(0.9, 0.95))


def training_step(
    model: torch.nn.Module,
    batch: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
) -> torch.Tensor:
    """One update on a batch of packed sequences (bfloat16 autocast on a GPU), gradients
    clipped to norm 1; its loss (detached, on the batch's device)."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=batch.device.type == "cuda"):
        loss = model(input_ids=batch, labels=batch).loss
    return update(model, loss, optimizer, schedule)


def update(
    model: torch.nn.Module,
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
) -> torch.Tensor:
    """Back-propagate `loss`, clip the gradients to norm 1, step the optimizer and the schedule;
    the loss, detached."""
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def make_schedule(
    optimizer: torch.optim.Optimizer, steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """learning_rate_factor over S = `steps` steps, W = max(1, min(MAX_WARMUP, ⌊S/10⌋))."""
    warmup = max(1, min(MAX_WARMUP, steps // 10))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: learning_rate_factor(step, warmup, steps)
    )


def train_steps(
    model: torch.nn.Module,
    batches: Iterable[torch.Tensor],
    config: ProxyConfig,
    steps: int,
    after_step: Callable[[int, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """S = `steps` updates of `model` (already on its device), one per batch, with W =
    max(1, min(MAX_WARMUP, ⌊S/10⌋)) warm-up steps; after each, after_step(step, losses).
    Returns the S step losses (float32, on the model's device)."""
    device = next(model.parameters()).device
    optimizer = make_optimizer(model, config)
    schedule = make_schedule(optimizer, steps)
    losses = torch.zeros(steps, device=device)
    for step, batch in zip(range(steps), batches, strict=False):
        batch = batch.to(device, non_blocking=True)
        losses[step] = training_step(model, batch, optimizer, schedule)
        if after_step is not None:
            after_step(step, losses)
    return losses
