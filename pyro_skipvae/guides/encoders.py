"""Amortized encoders x → (μ, log σ²) of a diagonal-Gaussian q(z | x), chosen by name from
:data:`ENCODERS`."""

import math

from torch import nn

from ..checks import check_widths
from ..registry import Registry

ENCODERS = Registry("encoder")


class Encoder(nn.Module):
    """Base class: ``forward(x) -> (loc, log_var)``, each of shape ``(N, latent_dim)``.

    The second output is the log *variance* log σ², as in the papers' code: those are the
    local variational parameters that semi-amortized inference refines (Kim et al. 2018).

    :param tuple data_shape: shape of one datapoint.
    :param int latent_dim: size of z.
    """

    #: whether the encoder reads discrete symbols (token ids) rather than real values; a
    #: prior that feeds it learned continuous inputs (VampPrior) refuses such an encoder
    discrete_inputs = False

    def __init__(self, data_shape: tuple[int, ...], latent_dim: int):
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.latent_dim = latent_dim


@ENCODERS.register("mlp")
class MLPEncoder(Encoder):
    r"""h = MLP(flatten(x)) with ReLU; μ = A h + a, log σ² = B h + b.

    :param tuple hidden_dims: hidden widths (default ``(1024, 1024)``).
    """

    def __init__(self, data_shape, latent_dim, *, hidden_dims=(1024, 1024)):
        super().__init__(data_shape, latent_dim)
        widths = [math.prod(self.data_shape), *check_widths("hidden_dims", hidden_dims)]
        layers = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(widths[-1], 2 * latent_dim)

    def forward(self, x):
        h = self.body(x.reshape(x.shape[0], -1).to(self.head.weight.dtype))
        loc, log_var = self.head(h).chunk(2, dim=-1)
        return loc, log_var


__all__ = ["ENCODERS", "Encoder", "MLPEncoder"]
