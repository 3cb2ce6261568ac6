r"""Importance-weighted negative log-likelihood with Pareto-k̂ diagnostics.

For each datapoint x and K proposals z_k ~ q(z|x) (Burda et al. 2016, eq. 8):

.. math::

    \log w_k = \log p(x | z_k) + \log p(z_k) - \log q(z_k | x), \qquad
    \widehat{\mathrm{NLL}}_K(x) = -\log \frac1K \sum_{k=1}^K w_k .

Works for any model/guide pair that follows the site contract of :mod:`pyro_skipvae.sites`
and whose model broadcasts over an extra leading batch dimension (the K particles, plate
``"particles"`` at dim −2): the guide is run **once** per chunk of datapoints to read
q(z|x) from its trace; the K proposals are drawn from that distribution, and the model is
run with ``z`` conditioned on them to read p(z) and p(x|z) from its trace.
"""

import logging
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pyro
import torch
from pyro import poutine
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..sites import LATENT_SITE, OBSERVED_SITE
from .estimate import Estimate, mean_and_se

logger = logging.getLogger(__name__)

#: k̂ above this: the importance-sampling estimate of that datapoint is unreliable (Vehtari
#: et al. 2024, §3); 0.5 < k̂ ≤ 0.7: usable but slow to converge.
PARETO_K_THRESHOLD = 0.7
#: PSIS needs a tail of at least a few samples; below this K no k̂ is computed.
MIN_SAMPLES_FOR_PARETO = 20


@dataclass
class ImportanceSamplingResult:
    """Per-datapoint results of :func:`importance_sample`.

    :ivar torch.Tensor nll: ``(N,)`` the IW-NLL estimate −log (1/K) Σ_k w_k, nats.
    :ivar torch.Tensor pareto_k: ``(N,)`` PSIS k̂ of each datapoint's K weights (``nan`` when
        K < 20; ``-inf`` when all weights are equal, i.e. the proposal is exact).
    :ivar torch.Tensor ess: ``(N,)`` effective sample size 1 / Σ_k w̄_k² of the normalised weights.
    :ivar torch.Tensor mc_var: ``(N,)`` delta-method Monte-Carlo variance of log p̂(x),
        Σ_k w̄_k² − 1/K (≈ Var(w) / (K E[w]²)); unreliable where k̂ > 0.7.
    :ivar torch.Tensor log_weights: ``(N, K)`` log-weights, or ``None`` if not kept.
    :ivar int num_samples: K.
    """

    nll: torch.Tensor
    pareto_k: torch.Tensor
    ess: torch.Tensor
    mc_var: torch.Tensor
    log_weights: torch.Tensor | None
    num_samples: int

    def estimate(self) -> Estimate:
        """Mean IW-NLL over the datapoints, nats, with its standard error.

        ``se`` is std over datapoints / √N (what varies if the data set were redrawn, and the
        Monte-Carlo noise); ``info["mc_se"]`` is the Monte-Carlo part alone, √(Σ_n mc_var_n)/N.
        The estimate is biased upward (an upper bound on the NLL in expectation, by Jensen);
        the bias falls like O(1/K) once K is large enough for the weights' variance to be finite.
        """
        mc_se = self.mc_var.double().clamp(min=0).sum().sqrt().item() / self.nll.shape[0]
        return mean_and_se(
            self.nll,
            estimator=f"importance-weighted (K={self.num_samples}, proposal q(z|x))",
            num_samples=self.num_samples,
            mc_se=mc_se,
        )

    def pareto_summary(self, threshold=PARETO_K_THRESHOLD) -> dict:
        """See :func:`pareto_k_summary`."""
        return pareto_k_summary(self.pareto_k, threshold=threshold)


def pareto_k(log_weights) -> torch.Tensor:
    """PSIS shape estimate k̂ for each row of ``log_weights`` (``(N, K)``), with ArviZ's
    :func:`arviz.psislw` (Vehtari et al. 2024).

    Rows whose weights are all equal (an exact proposal) get ``-inf`` (ArviZ would return
    ``inf``, as no tail can be fitted); with K < 20 every row gets ``nan``.
    """
    lw = torch.as_tensor(log_weights).detach().double().cpu()
    n, k = lw.shape
    out = torch.full((n,), math.nan, dtype=torch.float64)
    if k < MIN_SAMPLES_FOR_PARETO:
        return out
    spread = lw.max(-1).values - lw.min(-1).values
    constant = spread <= 1e-9 * lw.abs().max(-1).values.clamp(min=1.0)
    out[constant] = -math.inf
    rows = (~constant).nonzero().flatten()
    if len(rows):
        with warnings.catch_warnings():
            # ArviZ warns about its refactor on import and about k̂ > 0.7; we summarise k̂ ourselves.
            warnings.simplefilter("ignore")
            import arviz as az

            _, khat = az.psislw(lw[rows].numpy())
        out[rows] = torch.from_numpy(np.asarray(khat, dtype=np.float64))
    return out


def pareto_k_summary(k, threshold=PARETO_K_THRESHOLD) -> dict:
    """Share of datapoints whose k̂ exceeds ``threshold`` (default 0.7), with a warning text.

    :returns: dict with ``threshold``, ``num_points``, ``num_above``, ``share_above``,
        ``share_above_0.5``, ``max`` (largest finite k̂, or ``None``) and ``warning``
        (``None`` when no datapoint exceeds the threshold). Also logs the warning.
    """
    k = torch.as_tensor(k).double()
    finite = k[torch.isfinite(k)]
    n = int(k.numel())
    if torch.isnan(k).all():
        return {
            "threshold": threshold,
            "num_points": n,
            "num_above": None,
            "share_above": None,
            "share_above_0.5": None,
            "max": None,
            "warning": f"no Pareto k̂: fewer than {MIN_SAMPLES_FOR_PARETO} importance samples",
        }
    above = int((k > threshold).sum())
    summary = {
        "threshold": threshold,
        "num_points": n,
        "num_above": above,
        "share_above": above / n,
        "share_above_0.5": int((k > 0.5).sum()) / n,
        "max": finite.max().item() if finite.numel() else None,
        "warning": None,
    }
    if above:
        summary["warning"] = (
            f"Pareto k̂ > {threshold} for {above} of {n} datapoints ({100 * above / n:.1f}%): their "
            "importance-weighted NLL is unreliable (the weights' variance may be infinite); "
            "use more samples or a better proposal (e.g. refined local parameters)"
        )
        logger.warning(summary["warning"])
    return summary


@torch.no_grad()
def log_importance_weights(model, guide, x, *, num_samples, particle_chunk=None, guide_kwargs=None):
    """log w_{n,k} = log p(x_n, z_k) − log q(z_k | x_n), z_k ~ q(z | x_n): shape ``(N, K)``.

    The guide runs once; proposals are drawn ``particle_chunk`` at a time (default: all K)
    and the model is evaluated with ``z`` conditioned on them inside plate ``"particles"``
    (dim −2). Densities are unscaled ``fn.log_prob``.
    """
    guide_trace = poutine.trace(guide).get_trace(x, **(guide_kwargs or {}))
    q = guide_trace.nodes[LATENT_SITE]["fn"]
    chunk = num_samples if particle_chunk is None else int(particle_chunk)
    out = []
    for start in range(0, num_samples, chunk):
        k = min(chunk, num_samples - start)
        z = q.sample((k,))
        with pyro.plate("particles", k, dim=-2):
            model_trace = poutine.trace(poutine.condition(model, data={LATENT_SITE: z})).get_trace(
                x
            )
        prior = model_trace.nodes[LATENT_SITE]["fn"]
        obs = model_trace.nodes[OBSERVED_SITE]
        log_w = obs["fn"].log_prob(obs["value"]) + prior.log_prob(z) - q.log_prob(z)
        if log_w.shape != (k, x.shape[0]):
            raise ConfigError(
                f"expected log-weights of shape ({k}, {x.shape[0]}) (particles × datapoints); found "
                f"{tuple(log_w.shape)}: the model must broadcast over a leading particle dimension"
            )
        out.append(log_w)
    return torch.cat(out).T


@torch.no_grad()
def importance_sample(
    model,
    guide,
    data=None,
    *,
    num_samples=500,
    batch_size=None,
    particle_chunk=None,
    keep_log_weights=True,
    pareto=True,
    progress=False,
    guide_kwargs=None,
) -> ImportanceSamplingResult:
    r"""Importance-weighted NLL of every datapoint, with PSIS k̂, ESS and Monte-Carlo variance.

    * **Bias**: E[NLL_K] ≥ −log p(x), decreasing in K (Burda et al. 2016, Thm 1); exact for
      any K when q(z|x) is the true posterior. With k̂ > 0.7 the weights' variance is
      effectively infinite and the bias can stay large for any practical K.
    * **Variance**: per datapoint ≈ (Σ_k w̄_k² − 1/K) by the delta method (``mc_var``).
    * **Cost**: N · K decoder evaluations; memory ``batch_size × particle_chunk`` decoder
      outputs plus the N × K log-weights if kept (40 MB for 10,000 × 500 in float64).

    :param guide: Pyro guide, or a :class:`~.latent.Posteriors` (then ``data`` may be ``None``
        and q(z|x) is not recomputed).
    :param int num_samples: K importance samples per datapoint (default 500, as in the
        lagging-encoder code; 5000 for paper-grade MNIST numbers).
    :param int batch_size: datapoints per guide call (default 100).
    :param int particle_chunk: proposals per model call (default: 10,000 // batch_size, so
        one model call sees ≈ 10,000 (particle, datapoint) pairs).
    :param bool keep_log_weights: keep the ``(N, K)`` log-weights in the result.
    :param bool pareto: compute k̂ (≈ 0.4 s per 1,000 datapoints at K = 500); else ``nan``.
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"num_samples must be a positive integer, found {num_samples!r}")
    batch_size = 100 if batch_size is None else int(batch_size)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, found {batch_size}")
    if particle_chunk is None:
        particle_chunk = max(1, 10_000 // batch_size)
    stored = guide if hasattr(guide, "select") and hasattr(guide, "fns") else None  # a Posteriors
    if stored is not None:
        data = stored.data
    chunks = []
    starts = range(0, data.shape[0], batch_size)
    for start in tqdm(starts, desc=f"IW-NLL (K={num_samples})", disable=not progress, leave=False):
        x = data[start : start + batch_size]
        chunks.append(
            log_importance_weights(
                model,
                guide if stored is None else stored.guide(start, start + x.shape[0]),
                x,
                num_samples=num_samples,
                particle_chunk=particle_chunk,
                guide_kwargs=guide_kwargs,
            ).double()
        )
    lw = torch.cat(chunks)
    log_mean_w = lw.logsumexp(-1) - math.log(num_samples)
    w_bar = (lw - lw.logsumexp(-1, keepdim=True)).exp()
    sum_sq = w_bar.pow(2).sum(-1)
    return ImportanceSamplingResult(
        nll=-log_mean_w,
        pareto_k=pareto_k(lw)
        if pareto
        else torch.full(log_mean_w.shape, math.nan, dtype=torch.float64),
        ess=1.0 / sum_sq,
        mc_var=(sum_sq - 1.0 / num_samples).clamp(min=0),
        log_weights=lw if keep_log_weights else None,
        num_samples=num_samples,
    )


def importance_weighted_nll(
    model, guide, data, *, num_samples=500, batch_size=None, particle_chunk=None, progress=False
) -> torch.Tensor:
    """Per-datapoint importance-weighted estimate of −log p(x) in nats, shape ``(N,)``.

    See :func:`importance_sample` (which also returns k̂, ESS and the Monte-Carlo variance)
    for bias, variance and cost. ``importance_sample(...).estimate()`` gives the mean with
    its standard error.
    """
    return importance_sample(
        model,
        guide,
        data,
        num_samples=num_samples,
        batch_size=batch_size,
        particle_chunk=particle_chunk,
        keep_log_weights=False,
        pareto=False,
        progress=progress,
    ).nll
