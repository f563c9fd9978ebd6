"""The conditional GAN of Mirza & Osindero 2014 ("Conditional Generative Adversarial Nets"), section 4.1
(MNIST): fully connected G and D, both fed the class label y.

G: z -> 200 ReLU and one-hot y -> 1000 ReLU, joined (concatenated) -> 1200 ReLU -> the image.
D: the image -> maxout 240 units x 5 pieces and one-hot y -> maxout 50 x 5, joined -> maxout 240 x 4 ->
   one logit.

"Dropout with probability of 0.5 was applied to both the generator and discriminator" (section 4.1; the
paper says no more): here on every hidden layer's output, i.e. on what the joint layer and the output
layer read, never on the inputs z, x and y (dropping a one-hot label would erase it). `dropout` 0 turns it
off.

The label enters each network by concatenating an embedding of it: the per-input hidden layer on the
one-hot y IS a learned embedding (a dense layer on a one-hot vector picks one column of its weight:
W one_hot(y) + b = E[y] + b), followed by ReLU in G and by maxout in D. It is concatenated with the
hidden layer of z (G) or of the image (D), the paper's "joint hidden representation" (section 3.2).

Where bigtrain differs from the paper, and why:
- z is drawn by bigtrain's loop from N(0, I) for every family; the paper draws it uniformly from the unit
  hypercube.
- The output is tanh, as bigtrain's images are in [-1, 1]; the paper's sigmoid generates MNIST in [0, 1].
- Images are RGB and flattened: the image layer has 3 R^2 units (the paper's MNIST: 784 = 28^2).
- Weights keep torch's default initialization (the paper does not state one).
- With no classes (num_classes <= 1) the label branch sees a single class: a learned constant.

Parameters (section 4.1's layer sizes, with n = 3 R^2 and C classes):
G = (100 z + 1) 200 + (C + 1) 1000 + (1200 + 1) 1200 + (1200 + 1) n;
D = (n + 1) 240*5 + (C + 1) 50*5 + (240 + 50 + 1) 240*4 + 241.
At the paper's MNIST (n 784, C 10): G 2,413,984 and D 1,224,351; at 32x32 RGB: G 5,161,872, D 3,969,951.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .heads import d_heads
from .layers import MinibatchDiscrimination, assert_shape, one_hot
from .roles import DiscriminatorRole, DOutput, GeneratorRole


@dataclass
class Section:
    """model.cgan: layer sizes of section 4.1 (the z size is model.z_dim; the paper: 100)."""

    g_z_units: int = 200  # G: ReLU layer on z
    g_y_units: int = 1000  # G: ReLU layer on the one-hot label (its embedding)
    g_joint_units: int = 1200  # G: the combined ReLU layer
    d_x_units: int = 240  # D: maxout layer on the image ...
    d_x_pieces: int = 5
    d_y_units: int = 50  # ... and on the one-hot label (its embedding)
    d_y_pieces: int = 5
    d_joint_units: int = 240  # D: the joint maxout layer
    d_joint_pieces: int = 4
    dropout: float = 0.5  # on every hidden layer's output of G and D (section 4.1); 0: off

    def check(self, key: str, m) -> None:
        check(self, key)


def check(s: Section, key: str = "model.cgan") -> None:
    for name in ("g_z_units", "g_y_units", "g_joint_units", "d_x_units", "d_x_pieces", "d_y_units",
                 "d_y_pieces", "d_joint_units", "d_joint_pieces"):  # fmt: skip
        if getattr(s, name) < 1:
            raise ConfigError(f"{key}.{name}={getattr(s, name)} must be > 0")
    if not 0.0 <= s.dropout < 1.0:
        raise ConfigError(f"{key}.dropout={s.dropout} must be in [0, 1)")


def build(m, num_classes: int) -> tuple[nn.Module, nn.Module]:
    """Conditional on the dataset's labels (a single class when it has none)."""
    s = m.cgan
    check(s)
    if m.resolution < 1:
        raise ConfigError(f"model.resolution={m.resolution} must be > 0")
    classes = max(num_classes, 1)
    g = Generator(m.resolution, m.z_dim, classes, s.g_z_units, s.g_y_units, s.g_joint_units, s.dropout)
    d = Discriminator(
        m.resolution, classes, s.d_x_units, s.d_x_pieces, s.d_y_units, s.d_y_pieces, s.d_joint_units,
        s.d_joint_pieces, s.dropout, **d_heads(m, num_classes),
    )  # fmt: skip
    return g, d


class Maxout(nn.Module):
    """Maxout (Goodfellow et al. 2013): `units` outputs, each the max of `pieces` affine maps of the input."""

    def __init__(self, in_features: int, units: int, pieces: int):
        super().__init__()
        self.units, self.pieces = units, pieces
        self.linear = nn.Linear(in_features, units * pieces)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).view(x.shape[0], self.units, self.pieces).amax(dim=2)


class Generator(GeneratorRole):
    """G(z, y) -> tanh(W [relu(W_z z), relu(W_y one_hot(y))] ...) reshaped to (B, 3, R, R)."""

    class_tensors = (r"label\.",)  # the label's embedding layer: its shape follows the class count

    def __init__(
        self, resolution: int = 32, z_dim: int = 100, num_classes: int = 10, z_units: int = 200,
        y_units: int = 1000, joint_units: int = 1200, dropout: float = 0.5,
    ):  # fmt: skip
        super().__init__()
        self.resolution, self.z_dim, self.num_classes = resolution, z_dim, num_classes
        self.noise = nn.Linear(z_dim, z_units)
        self.label = nn.Linear(num_classes, y_units)
        self.joint = nn.Linear(z_units + y_units, joint_units)
        self.output = nn.Linear(joint_units, 3 * resolution * resolution)
        self.dropout = nn.Dropout(dropout)

    def forward(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert_shape(z, (None, self.z_dim), "cGAN G latent z")
        h = torch.cat(
            [F.relu(self.noise(z)), F.relu(self.label(one_hot(y, self.num_classes).to(z.dtype)))], 1
        )
        h = F.relu(self.joint(self.dropout(h)))
        img = torch.tanh(self.output(self.dropout(h)))
        return img.view(z.shape[0], 3, self.resolution, self.resolution)


class Discriminator(DiscriminatorRole):
    """D(x, y) -> w^T maxout_joint([maxout_x(x), maxout_y(one_hot(y))]) + b. The features are the joint
    maxout layer's outputs; minibatch discrimination (off by default) widens what the output layer reads,
    AC-GAN's classifier reads them beside it."""

    class_tensors = (r"label\.", r"classifier\.")  # the label's embedding layer, AC-GAN's head

    def __init__(
        self, resolution: int = 32, num_classes: int = 10, x_units: int = 240, x_pieces: int = 5,
        y_units: int = 50, y_pieces: int = 5, joint_units: int = 240, joint_pieces: int = 4,
        dropout: float = 0.5, minibatch_kernels: int = 0, minibatch_kernel_dims: int = 5, aux_classes: int = 0,
    ):  # fmt: skip
        super().__init__()
        self.resolution, self.num_classes = resolution, num_classes
        self.image = Maxout(3 * resolution * resolution, x_units, x_pieces)
        self.label = Maxout(num_classes, y_units, y_pieces)
        self.joint = Maxout(x_units + y_units, joint_units, joint_pieces)
        self.dropout = nn.Dropout(dropout)
        self.minibatch = (
            MinibatchDiscrimination(joint_units, minibatch_kernels, minibatch_kernel_dims)
            if minibatch_kernels
            else None
        )
        self.output = nn.Linear(joint_units + minibatch_kernels, 1)
        self.classifier = nn.Linear(joint_units, aux_classes) if aux_classes else None

    def input_blocks(self) -> list[nn.Module]:
        """The two input layers (image and label) as one block, then the joint layer."""
        return [nn.ModuleList([self.image, self.label]), self.joint]

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, parts: int = 1, all_outputs: bool = False
    ) -> torch.Tensor | DOutput:
        assert_shape(x, (None, 3, self.resolution, self.resolution), "cGAN D input")
        h = torch.cat([self.image(x.flatten(1)), self.label(one_hot(y, self.num_classes).to(x.dtype))], 1)
        features = self.joint(self.dropout(h))
        h = self.dropout(features)
        logits = self.output(h if self.minibatch is None else self.minibatch(h, parts)).squeeze(1)
        if not all_outputs:
            return logits
        return DOutput(logits, features, None if self.classifier is None else self.classifier(features))
