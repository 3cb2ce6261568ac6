"""A Student-t prior, registered under the name "student-t" (used by ``custom_prior.py``)."""

import pyro.distributions as dist
import torch

from pyro_skipvae.models import PRIORS, Prior


@PRIORS.register("student-t")
class StudentTPrior(Prior):
    """p(z) = Π_d StudentT(z_d; df, 0, 1). Its options are its keyword arguments (``df``)."""

    def __init__(self, latent_dim, df=5.0):
        super().__init__(latent_dim)
        self.register_buffer("df", torch.full((latent_dim,), float(df)))

    def forward(self, batch_shape):
        zeros = torch.zeros_like(self.df)
        return dist.StudentT(self.df, zeros, 1.0).to_event(1).expand(tuple(batch_shape))
