"""Shape contracts as properties (Hypothesis): decoders broadcast over any leading dimensions,
and the deterministic parts of the estimators do not depend on how the data are chunked.
All tensors are synthetic."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyro_skipvae.diagnostics import (
    Posteriors,
    expected_kl,
    kl_per_dimension,
    posterior_mean_variance,
)
from pyro_skipvae.models import DECODERS
from pyro_skipvae.sites import data_plate

pytestmark = pytest.mark.usefixtures("float64")
SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(
    leading=st.lists(st.integers(1, 3), min_size=0, max_size=3),
    batch=st.integers(1, 4),
    skip=st.booleans(),
)
def test_plain_decoders_broadcast_over_leading_dimensions(leading, batch, skip):
    for name in DECODERS.names():
        decoder_class = DECODERS.get(name)
        if getattr(decoder_class, "autoregressive", False):
            continue  # they read x; their own tests cover broadcasting against it
        torch.manual_seed(0)
        decoder = DECODERS.build(name, 3, (2, 5), skip=skip, options={})
        z = torch.randn(*leading, batch, 3)
        out = decoder(z)
        assert out.shape == (*leading, batch, 2, 5)
        flat = decoder(z.reshape(-1, 3)).reshape(out.shape)
        assert torch.allclose(out, flat, rtol=1e-12)


def linear_guide(n_features, latent, family=dist.Normal):
    g = torch.Generator().manual_seed(2)
    A = torch.randn(latent, n_features, generator=g)
    s = torch.rand(latent, generator=g) + 0.2

    def guide(x, **kwargs):
        with data_plate(x):
            return pyro.sample("z", family(x @ A.T, s).to_event(1))

    return guide


def model(x, **kwargs):
    with data_plate(x):
        pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))


@SETTINGS
@given(n=st.integers(2, 40), chunk=st.integers(1, 50), points=st.integers(1, 30))
def test_deterministic_estimators_do_not_depend_on_chunking(n, chunk, points):
    x = torch.randn(n, 4, generator=torch.Generator().manual_seed(n))
    z = torch.randn(points, 2, generator=torch.Generator().manual_seed(points))
    # the matrix-product path (Gaussian q) and the generic one (here Laplace q)
    for family in (dist.Normal, dist.Laplace):
        guide = linear_guide(4, 2, family)
        whole = Posteriors(guide, x, chunk_size=n)
        chunked = Posteriors(guide, x, chunk_size=chunk)
        assert torch.allclose(whole.mixture_log_prob(z), chunked.mixture_log_prob(z), rtol=1e-12)
        assert torch.allclose(
            posterior_mean_variance(whole), posterior_mean_variance(chunked), rtol=1e-12
        )
    # analytic KLs (Gaussian q and p)
    whole = Posteriors(linear_guide(4, 2), x, chunk_size=n)
    chunked = Posteriors(linear_guide(4, 2), x, chunk_size=chunk)
    assert float(expected_kl(model, whole)) == pytest.approx(
        float(expected_kl(model, chunked)), rel=1e-12
    )
    assert torch.allclose(kl_per_dimension(model, whole), kl_per_dimension(model, chunked))
