"""What every family's D may add before or beside its output layer, from the common `model` keys."""

from __future__ import annotations


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
