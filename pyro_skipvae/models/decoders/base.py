"""The decoder interface every decoder family implements."""

import math

import torch
from torch import nn


class Decoder(nn.Module):
    """Maps latent codes to the parameters of the likelihood.

    ``forward(z, x=None)`` takes ``z`` of shape ``(*batch, latent_dim)`` (any number of
    leading dimensions, so vectorised particles and importance samples broadcast) and returns
    a tensor of shape ``(*batch, *output_shape)``. Autoregressive decoders (PixelCNN, LSTM)
    also read the observed ``x`` (teacher forcing: the parameters at position i depend on
    x_<i only) and set :attr:`autoregressive`; plain decoders ignore ``x``.

    Generation goes through :meth:`sample`, which autoregressive families may override with
    a faster loop (an LSTM carries its state from token to token).

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

    @torch.no_grad()
    def sample(self, z: torch.Tensor, likelihood) -> torch.Tensor:
        """x ~ p(x | z) for codes ``z`` of shape ``(*batch, latent_dim)``.

        Plain decoders: one pass, then a draw from the likelihood. Autoregressive decoders:
        one pass per position of x in raster order (row-major over the flattened datapoint),
        each drawing position i from p(x_i | x_<i, z); correct for any decoder whose
        parameters at position i depend on x_<i only, and O(positions) passes.
        """
        if not self.autoregressive:
            return likelihood(self(z)).sample()
        x = torch.zeros(z.shape[:-1] + likelihood.data_shape, dtype=z.dtype, device=z.device)
        flat = x.view(*z.shape[:-1], -1)
        for i in range(flat.shape[-1]):
            draw = likelihood(self(z, x)).sample()
            flat[..., i] = draw.reshape(flat.shape)[..., i]
        return x
