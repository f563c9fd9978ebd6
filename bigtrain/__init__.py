"""bigtrain: train BigGAN, StyleGAN2 and progressive GANs at scale."""

__version__ = "0.1.0"
