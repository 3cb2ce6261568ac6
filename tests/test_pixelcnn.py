"""The gated PixelCNN decoder: autoregressive structure, skip wiring, exact normalisation
against brute-force enumeration, sampling, and memory-bounded evaluation.

All data here are synthetic (random binary images or enumerations of every binary image of a
tiny size); the checks are structural (exact zeros of gradients) or exact (probabilities of
all 2^n images sum to 1), so they fail for any wrong mask, shift or wiring."""

import itertools
import math

import pytest
import torch
from scipy import stats

from pyro_skipvae import ConfigError, SkipVAE
from pyro_skipvae.diagnostics import diagnose, plot_diagnostics
from pyro_skipvae.diagnostics.nll import importance_sample
from pyro_skipvae.diagnostics.plots import decode
from pyro_skipvae.models import LIKELIHOODS, PixelCNNDecoder
from pyro_skipvae.modes import evaluating


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize(
    "kernel_sizes,channels",
    [(3, 1), ([7, 3, 3], 1), ([2, 4, 5], 1), ([5, 3, 1], 2)],
)
def test_output_at_a_pixel_depends_only_on_earlier_pixels(float64, skip, kernel_sizes, channels):
    torch.manual_seed(0)
    h, w = 6, 5
    decoder = PixelCNNDecoder(
        3, (channels, h, w), skip=skip, num_layers=3, channels=4, kernel_sizes=kernel_sizes
    )
    x = torch.bernoulli(torch.full((1, channels, h, w), 0.5))
    z = torch.randn(1, 3)
    out = decoder(z, x.requires_grad_())
    x_grad_of = {}
    for i in range(h * w):
        (g,) = torch.autograd.grad(out[0, :, i // w, i % w].sum(), x, retain_graph=True)
        x_grad_of[i] = g[0].abs().sum(0).flatten()  # over input channels
    for i in range(h * w):
        assert torch.all(x_grad_of[i][i:] == 0), f"pixel {i} sees pixels >= {i}"


@pytest.mark.parametrize("skip", [True, False])
def test_receptive_field_has_no_blind_spot(float64, skip):
    """After L layers of kernel 3 pixel (r, c) sees every pixel of rows r-L … r-1 within L
    columns (above-right included, which masked-convolution stacks miss) and the L pixels to
    its left."""
    torch.manual_seed(0)
    h = w = 9
    layers = 3
    decoder = PixelCNNDecoder(
        3, (1, h, w), skip=skip, num_layers=layers, channels=4, kernel_sizes=3
    )
    x = torch.bernoulli(torch.full((1, 1, h, w), 0.5)).requires_grad_()
    r, c = 5, 4
    (g,) = torch.autograd.grad(decoder(torch.randn(1, 3), x)[0, 0, r, c], x)
    seen = g[0, 0] != 0
    for rr in range(r - layers, r):
        for cc in range(c - layers, c + layers + 1):
            assert seen[rr, cc], f"pixel ({r}, {c}) does not see ({rr}, {cc})"
    for cc in range(c - layers, c):
        assert seen[r, cc], f"pixel ({r}, {c}) does not see ({r}, {cc})"
    assert not seen[r, c:].any() and not seen[r + 1 :].any()


def place_sensitivity(decoder, keep):
    """Does the output still depend on z when only the z maps of ``keep`` (an index into
    ``decoder.z_linears``) are non-zero?"""
    with torch.no_grad():
        for i, linear in enumerate(decoder.z_linears):
            if i != keep:
                linear.weight.zero_()
                linear.bias.zero_()
    x = torch.bernoulli(torch.full((1, 1, 5, 5), 0.5))
    z = torch.randn(1, 3, requires_grad=True)
    (g,) = torch.autograd.grad(decoder(z, x).sum(), z)
    return bool(g.abs().sum() > 0)


@pytest.mark.parametrize("place", range(4))
def test_with_skip_z_reaches_every_gated_layer_and_the_output(float64, place):
    torch.manual_seed(0)
    decoder = PixelCNNDecoder(3, (1, 5, 5), skip=True, num_layers=3, channels=4, kernel_sizes=3)
    assert len(decoder.z_linears) == 4  # three gated layers and the output convolution
    assert place_sensitivity(decoder, place)


def test_without_skip_z_enters_the_first_layer_only(float64):
    torch.manual_seed(0)
    decoder = PixelCNNDecoder(3, (1, 5, 5), skip=False, num_layers=3, channels=4, kernel_sizes=3)
    assert len(decoder.z_linears) == 1
    # later layers and the output read no z maps: their inputs have the stack's channels only
    assert [layer.vertical.in_channels for layer in decoder.layers] == [2, 4, 4]
    assert decoder.output.in_channels == 4
    assert place_sensitivity(decoder, 0)
    skip = PixelCNNDecoder(3, (1, 5, 5), skip=True, num_layers=3, channels=4, kernel_sizes=3)
    assert [layer.vertical.in_channels for layer in skip.layers] == [2, 5, 5]
    assert skip.output.in_channels == 5
    with torch.no_grad():  # without its first-layer z maps the plain VAE ignores z entirely
        decoder.z_linears[0].weight.zero_()
    x = torch.bernoulli(torch.full((1, 1, 5, 5), 0.5))
    assert torch.equal(decoder(torch.zeros(1, 3), x), decoder(torch.ones(1, 3), x))


def all_images(shape, num_values=2):
    """Every image of ``shape`` with values in {0, …, num_values-1}: ``(num_values^n, *shape)``."""
    n = math.prod(shape)
    grid = torch.tensor(list(itertools.product(range(num_values), repeat=n)), dtype=torch.float64)
    return grid.view(-1, *shape)


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize(
    "likelihood,data_shape,num_values",
    [("bernoulli", (1, 3, 3), 2), ("bernoulli", (2, 2, 2), 2), ("categorical", (1, 2, 2), 3)],
)
def test_probabilities_of_all_images_sum_to_one(float64, skip, likelihood, data_shape, num_values):
    """Σ_x p(x | z) over every image of a tiny size is 1 for any z: true only for a correctly
    masked autoregressive model (a network that peeks at x_i does not sum to 1)."""
    options = {"num_categories": num_values} if likelihood == "categorical" else {}
    lik = LIKELIHOODS.build(likelihood, data_shape, options=options)
    torch.manual_seed(1)
    decoder = PixelCNNDecoder(
        2, lik.param_shape, skip=skip, num_layers=2, channels=3, kernel_sizes=[3, 2]
    ).double()
    with torch.no_grad():  # larger weights: sharp, far-from-uniform conditionals
        for p in decoder.parameters():
            p.mul_(3.0)
    images = all_images(data_shape, num_values)
    if likelihood == "categorical":
        images = images.long()
    z = torch.randn(3, 1, 2)  # three codes, each scoring every image
    with torch.no_grad():
        log_p = lik(decoder(z, images), images).log_prob(images)
    assert log_p.shape == (3, images.shape[0])
    assert log_p.exp().min() < 0.5 / images.shape[0]  # not uniform: the check has teeth
    torch.testing.assert_close(log_p.logsumexp(-1), torch.zeros(3), atol=1e-12, rtol=0)


def test_peeking_network_would_fail_the_enumeration(float64):
    """The enumeration check can fail: shifting the mask so pixel i sees itself breaks it."""
    lik = LIKELIHOODS.build("bernoulli", (1, 2, 2))
    torch.manual_seed(1)
    decoder = PixelCNNDecoder(2, (1, 2, 2), skip=True, num_layers=1, channels=3, kernel_sizes=3)
    decoder.layers[0].first = False  # mask B in the first layer: x_i feeds its own parameter
    with torch.no_grad():
        for p in decoder.parameters():
            p.mul_(3.0)
    images = all_images((1, 2, 2))
    with torch.no_grad():
        total = lik(decoder(torch.randn(1, 2), images), images).log_prob(images).logsumexp(-1)
    assert abs(total.item()) > 0.01  # log Σ p far from 0 (the real check allows 1e-12)


def test_samples_follow_the_teacher_forced_probabilities(float64):
    """Pixel-by-pixel samples of a 2×2 model have the distribution that log_prob assigns
    (χ² goodness of fit over the 16 images, 4,000 draws, level 0.001)."""
    lik = LIKELIHOODS.build("bernoulli", (1, 2, 2))
    torch.manual_seed(2)
    decoder = PixelCNNDecoder(2, (1, 2, 2), skip=True, num_layers=2, channels=3).double()
    with torch.no_grad():
        for p in decoder.parameters():
            p.mul_(2.0)
    z = torch.randn(1, 2)
    images = all_images((1, 2, 2))
    with torch.no_grad():
        probs = lik(decoder(z, images), images).log_prob(images).exp()
    n = 4000
    draws = decoder.sample(z.expand(n, 2), lik)
    assert draws.shape == (n, 1, 2, 2)
    index = (draws.flatten(1) * torch.tensor([8.0, 4.0, 2.0, 1.0])).sum(-1).long()
    counts = torch.bincount(index, minlength=16).double()
    expected = n * probs
    assert expected.min() > 5  # the χ² approximation holds
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < stats.chi2.ppf(0.999, df=15), (counts, expected)


@pytest.mark.parametrize("kernel_sizes", [None, [3, 5, 2], [4, 1, 3]])
def test_a_band_of_rows_gives_the_parameters_of_its_last_row(float64, kernel_sizes):
    """Sampling evaluates the band of rows r − reach … r only: the parameters of row r
    equal the full pass's, and a band one row shorter would not do (reach is tight)."""
    torch.manual_seed(0)
    decoder = PixelCNNDecoder(3, (2, 12, 5), skip=True, num_layers=3, kernel_sizes=kernel_sizes)
    x = torch.bernoulli(torch.full((2, 2, 12, 5), 0.5))
    z = torch.randn(2, 3)
    full = decoder(z, x)
    reach = decoder.reach
    for r in range(12):
        top = max(0, r - reach)
        band = decoder._network(z, x[:, :, top : r + 1], first_row=top)
        torch.testing.assert_close(band[:, :, -1], full[:, :, r])
        if r - reach - 1 >= 0:  # drop the band's top row: row r changes
            short = decoder._network(z, x[:, :, top + 1 : r + 1], first_row=top + 1)
            assert not torch.allclose(short[:, :, -1], full[:, :, r])


def test_leading_particle_dimensions_and_chunking(float64):
    torch.manual_seed(0)
    decoder = PixelCNNDecoder(3, (1, 5, 4), skip=True, num_layers=2, channels=4)
    x = torch.bernoulli(torch.full((6, 1, 5, 4), 0.5))
    z = torch.randn(7, 6, 3)
    out = decoder(z, x)
    assert out.shape == (7, 6, 1, 5, 4)
    torch.testing.assert_close(out[3], decoder(z[3], x))
    decoder.chunk_size = 5  # 42 images in chunks of 5 without gradients: same values
    with torch.no_grad():
        torch.testing.assert_close(decoder(z, x), out.detach())


def test_importance_sampling_calls_the_network_on_bounded_chunks(monkeypatch):
    """The IW-NLL's model calls carry 10,000 (particle, image) pairs; the network never sees
    more than ``chunk_size`` images at once."""
    vae = SkipVAE(
        (1, 6, 6),
        latent_dim=2,
        decoder="pixelcnn",
        encoder="conv",
        decoder_options={"num_layers": 2, "channels": 2},
        encoder_options={"channels": 2, "num_blocks": 2},
        seed=0,
    )
    decoder = vae.model.decoder
    seen = []
    network = decoder._network
    monkeypatch.setattr(decoder, "_network", lambda z, x: seen.append(len(x)) or network(z, x))
    x = torch.bernoulli(torch.full((150, 1, 6, 6), 0.4))
    vae.model.eval(), vae.guide.eval()
    result = importance_sample(vae.model, vae.guide, x, num_samples=300, pareto=False)
    assert result.nll.shape == (150,) and torch.isfinite(result.nll).all()
    assert sum(seen) == 150 * 300 and max(seen) <= decoder.chunk_size


def test_authors_settings_are_reachable_by_options():
    mnist = PixelCNNDecoder(20, (1, 28, 28), skip=True, num_layers=8, channels=32, kernel_sizes=3)
    assert mnist.channels == (32,) * 8 and mnist.kernel_sizes == (3,) * 8
    omniglot = PixelCNNDecoder(
        32,
        (1, 28, 28),
        skip=False,
        channels=32,
        kernel_sizes=[9, 9, 9, 7, 7, 7, 5, 5, 5, 3, 3, 3],
        z_maps=4,
    )
    assert len(omniglot.layers) == 12 and omniglot.layers[0].vertical.kernel_size == (5, 9)
    assert omniglot.z_linears[0].out_features == 4 * 28 * 28
    default = PixelCNNDecoder(20, (1, 28, 28))
    assert default.kernel_sizes == (7, 3, 3, 3) and default.channels == (8,) * 4


@pytest.mark.parametrize(
    "options,output_shape,message",
    [
        ({"num_layers": 3, "kernel_sizes": [3, 3]}, (1, 5, 5), "one value per layer"),
        ({"channels": 0}, (1, 5, 5), "channels"),
        ({"z_maps": 0}, (1, 5, 5), "z_maps"),
        ({"num_layers": 0}, (1, 5, 5), "num_layers"),
        ({}, (25,), r"\(C, H, W\)"),
    ],
)
def test_bad_options_are_config_errors(options, output_shape, message):
    with pytest.raises(ConfigError, match=message):
        PixelCNNDecoder(2, output_shape, **options)


def test_forward_without_images_says_how_to_generate():
    decoder = PixelCNNDecoder(2, (1, 5, 5))
    with pytest.raises(ConfigError, match="sample"):
        decoder(torch.randn(1, 2))


def test_pictures_of_a_pixelcnn_run_are_sampled(tmp_path):
    """Reconstructions, prior samples and traversals of an autoregressive decoder are drawn
    from p(x | z) pixel by pixel (binary images), not teacher-forced means."""
    import matplotlib

    matplotlib.use("Agg")
    vae = SkipVAE(
        (1, 8, 8),
        latent_dim=2,
        decoder="pixelcnn",
        encoder="conv",
        decoder_options={"num_layers": 2, "channels": 3},
        encoder_options={"channels": 3, "num_blocks": 2},
        seed=0,
    )
    x = torch.bernoulli(torch.full((40, 1, 8, 8), 0.3), generator=torch.Generator().manual_seed(0))
    labels = torch.arange(40) % 3
    with evaluating(vae.model, vae.guide):
        result = diagnose(vae.model, vae.guide, x, labels=labels, num_samples=0)
        reconstructions = decode(vae.model, result["codes"][:10], x[:10])
        paths = plot_diagnostics(vae.model, x, result, tmp_path, labels=labels, embedding="pca")
    samples = vae.sample(3)  # the front door draws pixel by pixel too
    for images, n in ((reconstructions, 10), (samples, 3)):
        assert images.shape == (n, 1, 8, 8) and ((images == 0) | (images == 1)).all()
    names = {p.rsplit("/", 1)[-1] for p in paths}
    assert {"reconstructions.png", "samples.png", "traversals.png", "embedding.png"} <= names
    assert all((tmp_path / name).stat().st_size > 1000 for name in names)
