"""The amortized variational family q(z | x) as a Pyro guide, chosen by name from
:data:`GUIDES`: ``"normal"`` (:class:`Guide`, diagonal Gaussian) or ``"flow"``
(:class:`FlowGuide`, the Gaussian pushed through a normalizing flow).

A guide factory is called as ``factory(encoder, **options)``. Every guide keeps the local
parameters λ = (μ, log σ²) that the encoder produces and semi-amortized inference refines;
what differs is :meth:`Guide.distribution`, the family built from them. The flow is a
property of q, not of the encoder, so every encoder works with every guide.
"""

import pyro
import pyro.distributions as dist
from pyro import poutine
from pyro.nn import PyroModule, pyro_method

from ..flows import autoregressive_flows
from ..names import forget_params_when_collected, unique_name
from ..registry import Registry
from ..sites import LATENT_SITE, data_plate
from .encoders import Encoder

GUIDES = Registry("guide")


@GUIDES.register("normal")
class Guide(PyroModule):
    r"""q(z | x) = N(z; μ(x), diag σ²(x)) on site ``"z"`` inside plate ``"data"``.

    :param Encoder encoder: x → λ = (μ, log σ²).
    :param str name: Pyro name of the module (default: ``"guide"``, made unique in the
        process, so two guides never share parameters in Pyro's store).

    ``guide(x, size=N, beta=β, local_params=None)`` mirrors the model's signature.
    ``local_params=(loc, log_var)`` replaces the encoder's output: semi-amortized inference
    passes refined per-datapoint parameters λ_K this way (Kim et al. 2018, §3). The local
    parameters are (μ, log σ²), the coordinates the authors' code refines in.
    """

    def __init__(self, encoder: Encoder, *, name: str | None = None):
        name = name or unique_name("guide")
        super().__init__(name)
        self.encoder = encoder
        forget_params_when_collected(self, name)

    # pyro_method: called directly (not through forward), a PyroModule would not register
    # the encoder's parameters with Pyro, so an inference that reads λ₀ here (semi-amortized
    # SVI) would never see, and never train, them.
    @pyro_method
    def local_params(self, x):
        """The encoder's variational parameters λ₀ = (μ, log σ²) for the batch ``x``."""
        return self.encoder(x)

    def distribution(self, loc, log_var):
        """q(z) for given local parameters (μ, log σ²), with event_dim 1."""
        return dist.Normal(loc, (0.5 * log_var).exp()).to_event(1)

    def forward(self, x, *, size=None, beta=1.0, local_params=None):
        loc, log_var = self.local_params(x) if local_params is None else local_params
        with data_plate(x, size):
            with poutine.scale(scale=beta):
                return pyro.sample(LATENT_SITE, self.distribution(loc, log_var))


@GUIDES.register("flow")
class FlowGuide(Guide):
    r"""q(z | x) = the law of g(ε), ε ~ N(μ(x), diag σ²(x)), g a stack of Pyro's autoregressive
    transforms shared by all datapoints (IAF, Kingma et al. 2016, eq. 10, with the flow
    applied after the amortized Gaussian):

    .. math::

        \log q(z|x) = \log \mathcal{N}(g^{-1}(z); \mu(x), \sigma^2(x))
                      + \log \left|\det \frac{\partial g^{-1}}{\partial z}\right|.

    Sampling and the density of q's own draws cost one network pass per layer (the
    transforms cache their input); the density at other points (the mixture pass of the
    MI diagnostics) inverts g, D sequential passes per layer.

    The local parameters are still (μ, log σ²), so semi-amortized refinement applies: it
    refines the base Gaussian with the flow fixed. KL(q_λ₀ ‖ q_λK) in ``kl`` mode is exact
    and analytic (a shared bijection leaves the KL of the bases unchanged;
    :func:`torch.distributions.kl.kl_divergence` knows this). KL(q ‖ p) has no closed form:
    the ELBOs and diagnostics use Monte Carlo, and per-dimension KL is undefined (q does not
    factorise).

    :param Encoder encoder: x → (μ, log σ²).
    :param str flow: ``"affine"`` (IAF, default) or ``"spline"`` (see :mod:`pyro_skipvae.flows`).
    :param int num_flows: number of layers (default 2).
    :param tuple hidden_dims: widths of each layer's MADE network (default: Pyro's).
    """

    def __init__(self, encoder, *, flow="affine", num_flows=2, hidden_dims=None, name=None):
        super().__init__(encoder, name=name)
        self.flows = autoregressive_flows(
            encoder.latent_dim, flow=flow, num_flows=num_flows, hidden_dims=hidden_dims
        )

    def distribution(self, loc, log_var):
        return dist.TransformedDistribution(super().distribution(loc, log_var), list(self.flows))
