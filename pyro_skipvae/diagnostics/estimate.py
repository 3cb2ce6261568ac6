"""A number with its Monte-Carlo standard error and the name of the estimator behind it;
the mean (:func:`mean_and_se`) and ratio (:func:`ratio_and_se`) estimators over datapoints."""

import math

import torch


class Estimate(float):
    """A ``float`` that also carries its standard error and how it was obtained.

    It behaves as the point estimate everywhere a float is expected (arithmetic, formatting,
    ``json.dumps``, comparisons); the extra attributes are for reporting.

    :ivar float se: standard error of the estimate (``nan`` where none applies).
    :ivar str estimator: short name of the estimator (e.g. ``"full-set"``).
    :ivar per_datapoint: the per-datapoint terms whose mean is the estimate, a tensor of
        shape ``(N,)``, or ``None``.
    :ivar dict info: further settings and facts (e.g. ``num_points``, ``log_n``).

    >>> e = Estimate(2.5, 0.1, estimator="full-set", log_n=9.21)
    >>> float(e), e.se, e.info["log_n"]
    (2.5, 0.1, 9.21)
    """

    def __new__(cls, value, se=math.nan, *, estimator="", per_datapoint=None, **info):
        self = super().__new__(cls, float(value))
        self.se = float(se)
        self.estimator = estimator
        self.per_datapoint = per_datapoint
        self.info = info
        return self

    def __repr__(self):
        extra = "".join(f", {k}={v!r}" for k, v in self.info.items())
        return f"Estimate({float(self)!r}, se={self.se!r}, estimator={self.estimator!r}{extra})"

    def __reduce__(self):
        return (_rebuild, (float(self), self.se, self.estimator, self.per_datapoint, self.info))


def _rebuild(value, se, estimator, per_datapoint, info):
    return Estimate(value, se, estimator=estimator, per_datapoint=per_datapoint, **info)


def mean_and_se(terms, *, estimator="", **info) -> Estimate:
    """The mean of per-datapoint ``terms`` (shape ``(N,)``) with standard error std/√N."""
    terms = terms.detach()
    n = terms.shape[0]
    se = terms.double().std().item() / math.sqrt(n) if n > 1 else math.nan
    return Estimate(
        terms.double().mean().item(),
        se,
        estimator=estimator,
        per_datapoint=terms,
        num_points=n,
        **info,
    )


def ratio_and_se(values, counts) -> tuple[float, float]:
    r"""R = Σ_n v_n / Σ_n c_n (e.g. nats per token) and its standard error over datapoints,
    by the delta method for a ratio of means (Cochran 1977, §6.4): with residuals
    r_n = v_n − R c_n,

    .. math::

        \mathrm{se}(R) = \frac{\sqrt{N/(N-1)\,\sum_n r_n^2}}{\sum_n c_n}.

    Long sentences have both more nats and more tokens; the residuals remove that shared
    part, which a standard error of Σ v_n alone would count as noise.
    """
    values, counts = values.double(), torch.as_tensor(counts).double()
    ratio = (values.sum() / counts.sum()).item()
    n = values.shape[0]
    if n < 2:
        return ratio, math.nan
    residuals = values - ratio * counts
    return ratio, math.sqrt(n / (n - 1) * residuals.pow(2).sum().item()) / counts.sum().item()
