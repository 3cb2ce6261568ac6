"""The decoder interface every decoder family implements."""

import math

import torch
from torch import nn


class Decoder(nn.Module):
    """Maps latent codes to the parameters of the likelihood.

    ``forward(z, x=None)`` takes ``z`` of shape ``(*batch, latent_dim)`` (any number of
    leading dimensions, so vectorised particles and importance samples broadcast) and returns
    a tensor of shape ``(*batch, *output_shape)``. Autoregressive decoders (PixelCNN, LSTM)
    also read the observed ``x`` (teacher forcing) and set :attr:`autoregressive`; plain
    decoders ignore ``x``.

    :param int latent_dim: size of z.
    :param tuple output_shape: shape of the likelihood parameters for one datapoint.
    :param bool skip: feed z into every layer (generative skip model, Dieng et al. 2019, eq. 5)
        rather than into the first layer only.
    """

    autoregressive = False

    def __init__(self, latent_dim: int, output_shape: tuple[int, ...], *, skip: bool):
        super().__init__()
        self.latent_dim = latent_dim
        self.output_shape = tuple(output_shape)
        self.skip = skip

    @property
    def output_size(self) -> int:
        return math.prod(self.output_shape)

    def forward(self, z: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError
