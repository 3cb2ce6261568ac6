"""The amortized variational family q(z | x) as a Pyro guide, chosen by name from
:data:`GUIDES`: ``"normal"`` (:class:`Guide`, diagonal Gaussian), ``"bn-normal"``
(:class:`BatchNormGuide`, BN-VAE: the Gaussian with batch-normalised means) or ``"flow"``
(:class:`FlowGuide`, the Gaussian pushed through a normalizing flow).

A guide factory is called as ``factory(encoder, **options)``. Every guide keeps the local
parameters λ = (μ, log σ²) that the encoder produces and semi-amortized inference refines;
what differs is :meth:`Guide.distribution`, the family built from them. The flow is a
property of q, not of the encoder, so every encoder works with every guide.
"""

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule, pyro_method
from torch import nn

from ..errors import ConfigError
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


@GUIDES.register("bn-normal")
class BatchNormGuide(Guide):
    r"""BN-VAE (Zhu et al. 2020): the diagonal Gaussian of :class:`Guide` whose means are
    batch-normalised with a *fixed* scale γ and a learned shift β_d,

    .. math::

        \hat\mu_d(x) = \gamma\,\frac{\mu_d(x) - m_d}{\sqrt{v_d + \epsilon}} + \beta_d,
        \qquad q(z|x) = \mathcal{N}(z; \hat\mu(x), \operatorname{diag}\sigma^2(x)),

    with m_d, v_d the mean and (biased) variance of μ_d over the minibatch in training and
    their running averages in ``eval()`` mode (:class:`torch.nn.BatchNorm1d`, ε = 1e-5,
    momentum 0.1); σ² is the encoder's, untouched.

    **Why the KL cannot vanish.** Against p(z) = N(0, I), each dimension's KL is
    ½(μ̂_d² + σ_d² − log σ_d² − 1) ≥ ½ μ̂_d², because t − log t − 1 ≥ 0 for t = σ_d² > 0. Over
    the data, E[μ̂_d²] = Var[μ̂_d] + E[μ̂_d]² = γ² + β_d² (batch normalisation fixes the mean
    and variance of μ̂_d to β_d and γ²), so

    .. math::

        \mathbb{E}_x\!\left[\mathrm{KL}(q(z|x)\,\|\,p(z))\right]
        \ge \sum_d \tfrac12 \mathbb{E}_x[\hat\mu_d^2]
        = \sum_d \tfrac12 (\gamma^2 + \beta_d^2) \ge \frac{D\gamma^2}{2}

    (Zhu et al. 2020, their lower bound on the expected KL). On one training minibatch the same
    algebra is exact: mean_B μ̂_d² = γ² v_d / (v_d + ε) + β_d², so the minibatch's mean KL is at
    least ½ Σ_d γ² v_d / (v_d + ε), which is D γ² / 2 up to the factor v_d / (v_d + ε) that
    ε = 1e-5 leaves. The bound needs the standard-normal prior; with a learned prior it
    bounds KL to N(0, I), not to p(z). In ``eval()`` mode the running statistics stand in for
    the population's, so the bound holds approximately.

    γ is a constant, not a parameter (the authors keep batch norm's weight at γ and freeze
    it); β is learned, starting at 0. A small γ leaves room for the KL to be small, a large
    one forces it up; the paper tunes γ per data set (the default 0.5 is a middle value, not
    a tuned one). The local parameters are (μ̂, log σ²), so semi-amortized
    refinement refines the normalised means.

    **A training minibatch of one row** (the last of an epoch when N % batch_size == 1, a
    data-parallel share of one row) has no variance to normalise by: it is normalised with the
    running statistics, as in ``eval()`` mode, and leaves them unchanged, so for that step the
    bound holds approximately, as it does in evaluation; every other minibatch keeps the exact
    guarantee. Running statistics come only from minibatches of two or more rows, so a fit
    whose minibatches are all single rows (``batch_size`` 1 per process) is refused
    (:meth:`check_fit`), and a minibatch of one before any larger one is a ConfigError.

    :param Encoder encoder: x → (μ, log σ²).
    :param float gamma: the fixed scale γ > 0 (default 0.5).

    Example::

        vae = SkipVAE(splits.data_shape, guide="bn-normal", guide_options={"gamma": 0.6})
        # skipvae fit --guide bn-normal --guide-option gamma=0.6

    Reference: Zhu, Bi, Liu, Ma, Li, Wu, *A Batch Normalized Inference Network Keeps the KL
    Vanishing Away*, ACL 2020 (arXiv:2004.12585); code at github.com/valdersoul/bn-vae
    (``modules/encoders/enc_lstm.py``).
    """

    def __init__(self, encoder: Encoder, *, gamma: float = 0.5, name: str | None = None):
        if isinstance(gamma, bool) or not isinstance(gamma, int | float) or not gamma > 0:
            raise ConfigError(f"bn-normal: gamma must be a positive number, found {gamma!r}")
        super().__init__(encoder, name=name)
        self.gamma = float(gamma)
        # affine=False: γ stays a constant (no optimizer, clip or weight decay touches it)
        self.batch_norm = nn.BatchNorm1d(encoder.latent_dim, affine=False)
        self.shift = nn.Parameter(torch.zeros(encoder.latent_dim))

    @pyro_method
    def local_params(self, x):
        """λ₀ = (μ̂, log σ²): the encoder's means batch-normalised to scale γ and shift β."""
        loc, log_var = self.encoder(x)
        return self.gamma * self._normalise(loc) + self.shift, log_var

    def _normalise(self, loc):
        """Batch norm of the means; a training minibatch of one row with the running
        statistics, left unchanged (see the class docstring)."""
        norm = self.batch_norm
        if not (self.training and loc.shape[0] == 1):
            return norm(loc)
        if not norm.num_batches_tracked:
            raise ConfigError(
                "bn-normal: a training minibatch of one row came before any larger one, so "
                "there are no statistics to normalise its means with; use minibatches of at "
                "least 2 rows (per data-parallel process)"
            )
        return nn.functional.batch_norm(
            loc, norm.running_mean, norm.running_var, training=False, eps=norm.eps
        )

    def check_fit(self, data) -> None:
        """Called by :meth:`SkipVAE.fit <pyro_skipvae.SkipVAE.fit>` with its
        :class:`~pyro_skipvae.infer.fit.FitData` before the run folder is written.

        :raises ConfigError: every training minibatch would hold one row per process
            (``batch_size`` 1, or fewer than 2 rows per data-parallel process).
        """
        if data.rank_batch_size < 2:
            raise ConfigError(
                "bn-normal: batch normalisation needs training minibatches of at least 2 rows "
                f"per process; found batch_size {data.batch_size} for N = "
                f"{data.train.shape[0]} training rows ({data.rank_batch_size} per process)"
            )
