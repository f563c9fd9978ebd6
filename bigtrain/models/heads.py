"""What every family's D may add before or beside its output layer, from the common `model` keys."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import assert_shape
from .roles import DOutput


def aux_classes(m, num_classes: int) -> int:
    """The classes of AC-GAN's auxiliary classifier: none without the head (model.aux_classifier) or
    without classes to tell apart (the objective then refuses regularize.aux_classifier, naming the keys)."""
    return num_classes if m.aux_classifier and num_classes > 1 else 0


def d_heads(m, num_classes: int) -> dict[str, int]:
    """Minibatch discrimination's kernels B and their dimension C (0 kernels: off), and AC-GAN's
    auxiliary classifier over the dataset's classes (0: none): keyword arguments of every family's D."""
    return {
        "minibatch_kernels": m.minibatch_kernels,
        "minibatch_kernel_dims": m.minibatch_kernel_dims,
        "aux_classes": aux_classes(m, num_classes),
    }


def attention_input_blocks(blocks: nn.ModuleList, attention: nn.ModuleDict) -> list[nn.Module]:
    """A residual D's input blocks for FreezeD: each block with the self-attention that follows it, if any."""
    return [
        nn.ModuleList([block, attention[str(i)]]) if str(i) in attention else block
        for i, block in enumerate(blocks)
    ]


def projection_d_forward(d: nn.Module, x: torch.Tensor, y: torch.Tensor, parts: int, all_outputs: bool,
                         what: str) -> torch.Tensor | DOutput:  # fmt: skip
    """The residual projection D of BigGAN and SAGAN: its blocks (self-attention after the ones
    `d.attention` names), global sum pooling of ReLU features, the linear output (after minibatch
    discrimination, where on) plus the projection <embed(y), features>, and the declared heads."""
    assert_shape(x, (None, 3, d.resolution, d.resolution), what)
    h = x
    for i, block in enumerate(d.blocks):
        h = block(h)
        if str(i) in d.attention:
            h = d.attention[str(i)](h)
    features = F.relu(h).sum(dim=(2, 3))
    out = d.linear(features if d.minibatch is None else d.minibatch(features, parts)).squeeze(1)
    if d.embed is not None:
        out = out + (d.embed(y) * features).sum(dim=1)
    if not all_outputs:
        return out
    classes = None if d.classifier is None else d.classifier(features)
    q_head = getattr(d, "q_head", None)  # InfoGAN's Q head (BigGAN's D only)
    return DOutput(out, features, classes, None if q_head is None else q_head(features))
