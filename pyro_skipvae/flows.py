r"""Stacks of Pyro's autoregressive normalizing flows, for the flow prior and the flow guide.

Each layer is one of :mod:`pyro.distributions.transforms`' autoregressive bijections
f: ℝᴰ → ℝᴰ, whose Jacobian is triangular:

* ``"affine"``: :class:`~pyro.distributions.transforms.AffineAutoregressive`,
  y_d = μ_d(x_{<d}) + σ_d(x_{<d}) x_d (Kingma et al. 2016, IAF, eq. 10; Papamakarios et al.
  2017, MAF, run the other way);
* ``"spline"``: :class:`~pyro.distributions.transforms.SplineAutoregressive`, a monotone
  rational-quadratic spline per dimension (Durkan et al. 2019; Dolatabadi et al. 2020).

Evaluating f takes one pass of its MADE network; f⁻¹ takes D sequential passes. Each layer's
network draws its own random input order (a registered buffer, so it is saved and restored),
so stacked layers need no separate permutations.
"""

from pyro.distributions import transforms
from torch import nn

from .checks import check_positive, check_widths
from .errors import ConfigError

FLOWS = ("affine", "spline")


def autoregressive_flows(latent_dim, *, flow="affine", num_flows=2, hidden_dims=None):
    """``num_flows`` autoregressive transforms of type ``flow`` on ℝ^``latent_dim``.

    :param str flow: ``"affine"`` (default) or ``"spline"``.
    :param int num_flows: number of layers (default 2).
    :param tuple hidden_dims: widths of each layer's MADE network (default: Pyro's,
        ``[3 D + 1]`` for affine, ``[10 D, 10 D]`` for spline).
    :returns: an :class:`torch.nn.ModuleList` of Pyro ``TransformModule``\\ s.
    :raises ConfigError: unknown ``flow``, ``num_flows`` < 1 or ``latent_dim`` < 2 (an
        autoregressive flow on one dimension has nothing to condition on).
    """
    if flow not in FLOWS:
        raise ConfigError(f"unknown flow {flow!r}; expected one of: {', '.join(FLOWS)}")
    check_positive(num_flows=num_flows)
    if latent_dim < 2:
        raise ConfigError(f"autoregressive flows need latent_dim >= 2, found {latent_dim}")
    hidden = None if hidden_dims is None else list(check_widths("hidden_dims", hidden_dims))
    build = (
        transforms.affine_autoregressive if flow == "affine" else transforms.spline_autoregressive
    )
    return nn.ModuleList(build(latent_dim, hidden_dims=hidden) for _ in range(num_flows))
