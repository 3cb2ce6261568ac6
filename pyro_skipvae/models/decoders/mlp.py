"""Multilayer-perceptron decoder, with or without generative skip connections."""

import torch
from torch import nn

from ...checks import check_widths
from .base import Decoder


class MLPDecoder(Decoder):
    r"""MLP decoder in which z may enter every layer (Dieng et al. 2019, §3).

    With hidden widths ``hidden_dims = (H_1, …, H_L)``:

    .. math::

        h_1 &= f(W_1 z + b_1) \\
        h_l &= f(W_l h_{l-1} + U_l z + b_l), \quad l = 2, …, L \\
        \eta &= W_{L+1} h_L + U_{L+1} z + b_{L+1}

    where ``f`` is ReLU and η are the likelihood parameters. Each layer has its own skip
    weights U_l. With ``skip=False`` the U_l terms are absent and this is the standard VAE
    decoder with otherwise identical sizes.

    :param int latent_dim: size of z.
    :param tuple output_shape: likelihood parameter shape for one datapoint.
    :param tuple hidden_dims: widths of the hidden layers (default ``(1024, 1024)``, as in
        the authors' MNIST code).
    :param bool skip: add the U_l z terms (default True).
    """

    def __init__(self, latent_dim, output_shape, *, hidden_dims=(1024, 1024), skip=True):
        super().__init__(latent_dim, output_shape, skip=skip)
        widths = [latent_dim, *check_widths("hidden_dims", hidden_dims), self.output_size]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        # The first layer already sees z through W_1, so skips start at layer 2. Bias-free:
        # every layer already has b_l.
        self.skips = nn.ModuleList(
            nn.Linear(latent_dim, width, bias=False) for width in widths[2:] if skip
        )

    def forward(self, z, x=None):
        h = z
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if self.skip and i > 0:
                h = h + self.skips[i - 1](z)
            if i < len(self.layers) - 1:
                h = torch.relu(h)
        return h.reshape(z.shape[:-1] + self.output_shape)
