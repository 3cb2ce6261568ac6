"""Priors p(z) over the latent site ``"z"``.

A prior is an :class:`torch.nn.Module` whose ``forward(batch_shape)`` returns a Pyro
distribution with ``event_dim == 1`` and ``event_shape == (latent_dim,)``, batched to
``batch_shape``. Choose one by name from :data:`PRIORS` or pass any such module.

A prior defined through the inference network (:class:`VampPrior`) receives the guide's
encoder from whoever builds both (:meth:`Prior.attach_encoder`, called by
:class:`~pyro_skipvae.SkipVAE`): the model does not know the guide, and a prior that imported
the guides package would tie the generative side to the inference side.
"""

import pyro.distributions as dist
import torch
from torch import nn

from ..errors import ConfigError
from ..flows import autoregressive_flows
from ..registry import Registry

PRIORS = Registry("prior")


class Prior(nn.Module):
    """Base class: ``forward(batch_shape) -> Distribution`` over ``z`` with event_dim 1."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def forward(self, batch_shape: tuple[int, ...]) -> dist.TorchDistribution:
        raise NotImplementedError

    def attach_encoder(self, encoder: nn.Module) -> None:
        """Called once model and guide exist, with the guide's encoder; a no-op unless the
        prior is defined through it (:class:`VampPrior`)."""


@PRIORS.register("normal")
class StandardNormalPrior(Prior):
    """p(z) = N(0, I)."""

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        # Buffers, not constants, so ``.to(device)`` moves them with the model.
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self, batch_shape):
        return dist.Normal(self.loc, self.scale).to_event(1).expand(tuple(batch_shape))


@PRIORS.register("learned-normal")
class LearnedNormalPrior(Prior):
    """p(z) = N(m, diag s²) with learnable m and log s, initialised at N(0, I)."""

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.log_scale = nn.Parameter(torch.zeros(latent_dim))

    def forward(self, batch_shape):
        return dist.Normal(self.loc, self.log_scale.exp()).to_event(1).expand(tuple(batch_shape))


@PRIORS.register("mixture")
class MixturePrior(Prior):
    """p(z) = Σ_k π_k N(z; m_k, diag s_k²), all of π, m_k and log s_k learnable.

    Components start at unit scale with means drawn from N(0, I) (spread so they do not
    start identical, which would keep their gradients identical).

    :param int num_components: number of mixture components K (default 10).
    """

    def __init__(self, latent_dim: int, num_components: int = 10):
        super().__init__(latent_dim)
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.locs = nn.Parameter(torch.randn(num_components, latent_dim))
        self.log_scales = nn.Parameter(torch.zeros(num_components, latent_dim))

    def forward(self, batch_shape):
        components = dist.Normal(self.locs, self.log_scales.exp()).to_event(1)
        mixture = dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)
        return mixture.expand(tuple(batch_shape))


@PRIORS.register("vamp")
class VampPrior(Prior):
    r"""The VampPrior (Tomczak & Welling 2018, eq. 9): the aggregate posterior of K learned
    pseudo-inputs u_k,

    .. math::

        p(z) = \frac{1}{K} \sum_{k=1}^{K} q(z \mid u_k),

    with q the guide's encoder (μ(u), diag σ²(u)). The pseudo-inputs have the data's shape
    and live in (0, 1) (u = sigmoid(a), a learnable), the range of image intensities; the
    encoder is trained through p(z) as well as through q(z|x).

    The encoder arrives through :meth:`attach_encoder` (the front door calls it); it is held
    by reference, not as a submodule, so its weights are saved once, with the guide. The
    pseudo-inputs are created then, from the encoder's ``data_shape``. Log-densities have no
    closed-form KL against q, so ELBOs and diagnostics use Monte Carlo, and the
    per-dimension KL is undefined (a mixture does not factorise).

    Each evaluation runs the encoder on all K pseudo-inputs (K = 500 costs about as much as
    ten minibatches of 50).

    :param int num_pseudo: number K of pseudo-inputs (default 500, as in the paper's MNIST runs).
    """

    def __init__(self, latent_dim: int, num_pseudo: int = 500):
        super().__init__(latent_dim)
        if isinstance(num_pseudo, bool) or not isinstance(num_pseudo, int) or num_pseudo < 1:
            raise ConfigError(f"num_pseudo must be a positive integer, found {num_pseudo!r}")
        self.num_pseudo = num_pseudo
        self.pseudo_logits = None
        self._encoder = ()  # a tuple, so nn.Module does not register the encoder as a child

    def attach_encoder(self, encoder):
        if getattr(encoder, "latent_dim", self.latent_dim) != self.latent_dim:
            raise ConfigError(
                f"VampPrior: encoder latent_dim {encoder.latent_dim} != prior latent_dim "
                f"{self.latent_dim}"
            )
        if getattr(encoder, "discrete_inputs", False):
            raise ConfigError(
                f"VampPrior: the {type(encoder).__name__} reads token ids, so it cannot encode "
                "learned continuous pseudo-inputs; use another prior with this encoder"
            )
        self._encoder = (encoder,)
        if self.pseudo_logits is None:
            data_shape = tuple(encoder.data_shape)
            # Centred on mid-grey with some spread, so the K components start apart.
            self.pseudo_logits = nn.Parameter(torch.randn(self.num_pseudo, *data_shape))

    @property
    def pseudo_inputs(self) -> torch.Tensor:
        """The K pseudo-inputs u_k in (0, 1), shape ``(K, *data_shape)``."""
        return torch.sigmoid(self.pseudo_logits)

    def forward(self, batch_shape):
        if not self._encoder:
            raise ConfigError(
                "VampPrior has no encoder: build it through SkipVAE, or call "
                "prior.attach_encoder(encoder) first"
            )
        loc, log_var = self._encoder[0](self.pseudo_inputs)
        components = dist.Normal(loc, (0.5 * log_var).exp()).to_event(1)
        logits = loc.new_zeros(self.num_pseudo)
        mixture = dist.MixtureSameFamily(dist.Categorical(logits=logits), components)
        return mixture.expand(tuple(batch_shape))


@PRIORS.register("flow")
class FlowPrior(Prior):
    r"""A normalizing-flow prior: z = f⁻¹(u), u ~ N(0, I), with f a stack of Pyro's
    autoregressive transforms (see :mod:`pyro_skipvae.flows`), so that

    .. math::

        \log p(z) = \log \mathcal{N}(f(z); 0, I) + \log \left|\det \frac{\partial f}{\partial z}\right|.

    The flows run in the density direction (MAF, Papamakarios et al. 2017): log p(z) at the
    guide's draws, the ELBO's hot path, costs one network pass per layer; drawing z from the
    prior (generation only) costs D sequential passes per layer. There is no closed-form KL
    against q; ELBOs and diagnostics use Monte Carlo, and per-dimension KL is undefined.

    :param str flow: ``"affine"`` (default) or ``"spline"``.
    :param int num_flows: number of flow layers (default 2).
    :param tuple hidden_dims: widths of each layer's MADE network (default: Pyro's).
    """

    def __init__(self, latent_dim: int, flow="affine", num_flows=2, hidden_dims=None):
        super().__init__(latent_dim)
        self.flows = autoregressive_flows(
            latent_dim, flow=flow, num_flows=num_flows, hidden_dims=hidden_dims
        )
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def forward(self, batch_shape):
        base = dist.Normal(self.loc, self.scale).to_event(1).expand(tuple(batch_shape))
        # TransformedDistribution applies its transforms in order when sampling, so the
        # inverses go in reverse: log_prob then runs f_1, ..., f_K forward, one pass each.
        return dist.TransformedDistribution(base, [f.inv for f in reversed(self.flows)])
