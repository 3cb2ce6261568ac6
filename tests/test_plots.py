"""The diagnostic pictures show the numbers they are given: which data lands in which panel,
what the titles and labels say, how images are laid out and clipped, and that a figure is
written atomically and closed. (Layout constants such as figure sizes are not specified.)"""

import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgba

from pyro_skipvae.diagnostics import plots


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plots._pyplot().close("all")


def image_axes(fig):
    """Axes of a grid figure as rows of (image array or None, y label, title)."""
    rows = {}
    for ax in fig.axes:
        row, col = ax.get_subplotspec().rowspan.start, ax.get_subplotspec().colspan.start
        image = ax.images[0].get_array().data if ax.images else None
        rows.setdefault(row, {})[col] = (image, ax.get_ylabel(), ax.get_title())
    return [[rows[r][c] for c in sorted(rows[r])] for r in sorted(rows)]


def test_image_shapes_and_conversion():
    assert plots.is_image_shape((28, 28)) and plots.is_image_shape((1, 28, 28))
    assert plots.is_image_shape((3, 8, 8))
    assert not plots.is_image_shape((2, 8, 8)) and not plots.is_image_shape((784,))
    assert not plots.is_image_shape((1, 1, 28, 28))
    grey = torch.tensor([[[-0.5, 0.25], [1.5, 1.0]]])
    np.testing.assert_array_equal(plots._to_image(grey), [[0.0, 0.25], [1.0, 1.0]])
    colour = torch.arange(12.0).reshape(3, 2, 2) / 12
    np.testing.assert_array_equal(plots._to_image(colour), colour.permute(1, 2, 0).double())
    assert plots._np([1, 2]).dtype == float
    # tensors that require grad (codes straight from an encoder) are detached, in float64
    converted = plots._np(torch.ones(2, requires_grad=True, dtype=torch.float32))
    assert converted.dtype == np.float64 and converted.tolist() == [1.0, 1.0]


def test_reconstructions_alternate_data_and_reconstruction_rows():
    originals, recons = torch.rand(13, 1, 4, 4), torch.rand(13, 1, 4, 4)
    fig = plots.plot_reconstructions(originals, recons, num_columns=5)
    rows = image_axes(fig)
    assert len(rows) == 6 and all(len(r) == 5 for r in rows)
    assert [r[0][1] for r in rows] == ["data", "recon."] * 3
    for k, (data_row, recon_row) in enumerate(zip(rows[::2], rows[1::2])):
        for j in range(5):
            i = 5 * k + j
            if i < 13:
                np.testing.assert_allclose(data_row[j][0], originals[i, 0].double())
                np.testing.assert_allclose(recon_row[j][0], recons[i, 0].double())
            else:  # the last rows are short: empty panels
                assert data_row[j][0] is None and recon_row[j][0] is None
    assert fig._suptitle.get_text() == "Data and reconstructions (mean of p(x|E[z|x]))"
    assert plots.plot_reconstructions(originals, recons, title="T")._suptitle.get_text() == "T"


def test_samples_fill_rows_of_num_columns():
    samples = torch.rand(7, 3, 3)
    rows = image_axes(plots.plot_samples(samples, num_columns=3))
    assert [sum(c[0] is not None for c in r) for r in rows] == [3, 3, 1]
    np.testing.assert_allclose(rows[2][0][0], samples[6].double())
    assert all(c[1] == "" for r in rows for c in r)  # no row labels
    fig = plots.plot_samples(torch.rand(12, 3, 3))  # 10 a row by default
    assert [sum(c[0] is not None for c in r) for r in image_axes(fig)] == [10, 2]
    assert fig._suptitle.get_text() == "Samples from the prior (mean of p(x|z), z ~ p(z))"
    assert plots.plot_samples(samples, title="T")._suptitle.get_text() == "T"


def test_traversals_label_dimensions_and_values():
    images = torch.rand(2, 3, 1, 4, 4)
    fig = plots.plot_traversals(images, dims=[4, 7], values=[-2.0, 0.0, 1.5])
    rows = image_axes(fig)
    assert [r[0][1] for r in rows] == ["z4", "z7"]
    assert [c[2] for c in rows[0]] == ["-2.0", "+0.0", "+1.5"]
    assert [c[2] for c in rows[1]] == ["", "", ""]  # values only above the first row
    np.testing.assert_allclose(rows[1][2][0], images[1, 2, 0].double())
    assert fig._suptitle.get_text().startswith("Latent traversals")


def test_kl_bars_show_every_dimension_and_grey_out_inactive_ones():
    kl = torch.tensor([0.5, 0.0, 2.0, 0.01])
    variances = [0.2, 0.001, 0.5, 0.01]  # active iff > 0.01 (strictly): dims 0 and 2
    fig = plots.plot_kl_per_dimension(kl, variances=variances)
    (ax,) = fig.axes
    bars = {round(p.get_x() + p.get_width() / 2): p for p in ax.patches}
    assert sorted(bars) == [0, 1, 2, 3]
    assert [bars[d].get_height() for d in range(4)] == pytest.approx(kl.tolist())
    blue, grey = to_rgba("tab:blue"), to_rgba("0.7")
    assert [bars[d].get_facecolor() for d in range(4)] == [blue, grey, blue, grey]
    assert ax.get_title() == "KL per dimension: total 2.51 nats, 2 of 4 active"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "active (Var E[z_d|x] > 0.01)",
        "inactive",
    ]
    assert ax.get_xlabel() == "latent dimension d" and ax.get_ylabel() == "KL (nats)"
    assert ax.get_xlim() == pytest.approx((-0.7, 3.7))


def test_kl_bars_without_variances_count_every_dimension_active():
    fig = plots.plot_kl_per_dimension([1.0, 2.0], threshold=0.5, title="mine")
    (ax,) = fig.axes
    assert len(ax.patches) == 2 and ax.get_title() == "mine"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["active (Var E[z_d|x] > 0.5)"]


def test_pca_embedding_plots_the_first_points_coloured_by_label():
    rng = np.random.default_rng(0)
    codes = rng.normal(size=(50, 4)) * [3.0, 2.0, 1.5, 1.0]  # 2 components: ~80% of variance
    labels = np.repeat([0, 1, 2], [20, 20, 10])
    fig = plots.plot_embedding(codes, labels, method="pca", max_points=40)
    (ax,) = fig.axes
    # 40 points: labels 0 and 1 only, 20 each, in the order of their first appearance
    assert [len(c.get_offsets()) for c in ax.collections] == [20, 20]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["0", "1"]
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2, random_state=0).fit(codes[:40])
    np.testing.assert_allclose(ax.collections[1].get_offsets(), pca.transform(codes[20:40]))
    share = 100 * pca.explained_variance_ratio_.sum()
    assert 60 < share < 90
    assert ax.get_title() == f"Posterior means, PCA ({share:.0f}% of variance), 40 points"
    colours = [tuple(c.get_facecolor()[0][:3]) for c in ax.collections]
    assert colours[0] != colours[1]


def test_tsne_embedding_without_labels():
    codes = np.random.default_rng(1).normal(size=(10, 3))
    fig = plots.plot_embedding(codes)  # t-SNE by default
    (ax,) = fig.axes
    assert len(ax.collections) == 1 and len(ax.collections[0].get_offsets()) == 10
    assert ax.get_legend() is None
    # perplexity = min(30, max(2, (n - 1) // 3)) = 3 for 10 points
    assert ax.get_title() == "Posterior means, t-SNE (perplexity 3), 10 points"
    assert plots.plot_embedding(codes, method="pca", title="T").axes[0].get_title() == "T"
    # the embedding is scikit-learn's 2-D t-SNE from a PCA start, seeded (default seed 0)
    from sklearn.manifold import TSNE

    expected = TSNE(n_components=2, perplexity=3.0, init="pca", random_state=0).fit_transform(codes)
    np.testing.assert_allclose(ax.collections[0].get_offsets(), expected)
    again = plots.plot_embedding(codes, seed=0).axes[0].collections[0].get_offsets()
    np.testing.assert_allclose(again, expected)
    # perplexity (n - 1) // 3 between 2 and 30
    for n, perplexity in ((4, 2), (11, 3), (100, 30)):
        codes_n = np.random.default_rng(n).normal(size=(n, 3))
        title = plots.plot_embedding(codes_n).axes[0].get_title()
        assert title == f"Posterior means, t-SNE (perplexity {perplexity}), {n} points"
    with pytest.raises(ValueError, match="unknown embedding method 'umap'"):
        plots.plot_embedding(codes, method="umap")


def test_save_figure_writes_a_png_atomically_and_closes_the_figure(tmp_path):
    plt = plots._pyplot()
    fig = plots.plot_samples(torch.rand(2, 4, 4))
    path = tmp_path / "samples.png"
    path.write_bytes(b"previous")
    plots.save_figure(fig, path, dpi=50)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width = int.from_bytes(data[16:20], "big")  # the IHDR chunk
    assert width == round(fig.get_size_inches()[0] * 50)
    assert not plt.fignum_exists(fig.number)
    assert [p.name for p in tmp_path.iterdir()] == ["samples.png"]  # no temporary left


def test_a_failed_save_keeps_the_previous_file_and_closes_the_figure(tmp_path):
    plt = plots._pyplot()
    fig = plots.plot_samples(torch.rand(2, 4, 4))
    path = tmp_path / "samples.png"
    path.write_bytes(b"previous")
    with pytest.raises(ValueError):
        plots.save_figure(fig, path, dpi=-1)
    assert path.read_bytes() == b"previous"
    assert not plt.fignum_exists(fig.number)
    assert [p.name for p in tmp_path.iterdir()] == ["samples.png"]


class Recorder:
    """Stands in for the plotting functions: records each call, returns a blank figure."""

    def __init__(self, monkeypatch):
        self.calls = {}
        for name in ("embedding", "kl_per_dimension", "reconstructions", "samples", "traversals"):
            monkeypatch.setattr(plots, f"plot_{name}", self._record(name))

    def _record(self, name):
        def plot(*args, **kwargs):
            self.calls[name] = (args, kwargs)
            return plots._pyplot().figure()

        return plot


def diagnose_result(latent_dim, n, kl_per_dim=True):
    g = torch.Generator().manual_seed(1)
    kl = torch.rand(latent_dim, generator=g)
    return {
        "codes": torch.randn(n, latent_dim, generator=g),
        "kl_per_dim": kl if kl_per_dim else None,
        "posterior_mean_variance": torch.rand(latent_dim, generator=g),
        "metrics": {"au_threshold": 0.05},
    }


def test_plot_diagnostics_draws_the_result_it_is_given(monkeypatch, tmp_path):
    from pyro_skipvae import SkipVAE

    vae = SkipVAE((1, 6, 6), latent_dim=10, hidden_dims=(8,), seed=0)
    data = torch.rand(40, 1, 6, 6)
    labels = torch.arange(40) % 3
    result = diagnose_result(10, 40)
    decoded = []
    real_decode = plots.decode

    def decode(model, z, x_like):
        decoded.append((z.clone(), x_like))
        return real_decode(model, z, x_like)

    monkeypatch.setattr(plots, "decode", decode)
    rec = Recorder(monkeypatch)
    paths = plots.plot_diagnostics(
        vae.model, data, result, tmp_path, labels=labels, embedding="pca", max_points=7,
        prefix="p_", seed=3,
    )  # fmt: skip
    names = ["embedding", "kl_per_dim", "reconstructions", "samples", "traversals"]
    assert paths == [str(tmp_path / f"p_{n}.png") for n in names]
    assert all((tmp_path / f"p_{n}.png").read_bytes()[:4] == b"\x89PNG" for n in names)

    args, kwargs = rec.calls["embedding"]
    assert args[0] is result["codes"] and args[1] is labels
    assert kwargs == {"method": "pca", "max_points": 7, "seed": 3}
    args, kwargs = rec.calls["kl_per_dimension"]
    assert args == (result["kl_per_dim"],)
    assert kwargs["variances"] is result["posterior_mean_variance"] and kwargs["threshold"] == 0.05

    # reconstructions: the first 20 datapoints and their codes; means, so no "drawn" title
    (recon_z, recon_x), (prior_z, prior_x), (trav_z, trav_x) = decoded
    assert torch.equal(recon_z, result["codes"][:20]) and torch.equal(recon_x, data[:20])
    args, kwargs = rec.calls["reconstructions"]
    assert torch.equal(args[0], data[:20]) and args[1].shape == (20, 1, 6, 6)
    assert kwargs["title"] is None
    # samples: 30 prior draws, reproducible from the seed
    assert prior_z.shape == (30, 10) and torch.equal(prior_x, data[:30])
    assert rec.calls["samples"][1]["title"] is None
    torch.manual_seed(3)
    torch.testing.assert_close(prior_z, plots.prior_sample(vae.model, data[:30]))
    # traversals: the 8 dimensions of most KL, each swept over -3..3 around the first code
    dims = torch.argsort(result["kl_per_dim"], descending=True)[:8].tolist()
    args, kwargs = rec.calls["traversals"]
    assert args[0].shape == (8, 9, 1, 6, 6) and args[1] == dims
    assert args[2] == pytest.approx(torch.linspace(-3, 3, 9).tolist())
    assert kwargs["title"] == "Latent traversals of the 8 dims with most KL (others at E[z|x_0])"
    z = trav_z.reshape(8, 9, 10)
    for i, d in enumerate(dims):
        others = [k for k in range(10) if k != d]
        assert torch.equal(z[i, :, others], result["codes"][0, others].expand(9, 9))
        assert z[i, :, d].tolist() == pytest.approx(torch.linspace(-3, 3, 9).tolist())
    assert trav_x.shape == (72, 1, 6, 6) and torch.equal(trav_x[5], data[0])


def test_plot_diagnostics_of_an_autoregressive_decoder_and_of_non_images(monkeypatch, tmp_path):
    from pyro_skipvae import SkipVAE

    vae = SkipVAE((1, 6, 6), latent_dim=10, hidden_dims=(8,), seed=0)
    monkeypatch.setattr(vae.model.decoder, "autoregressive", True, raising=False)
    monkeypatch.setattr(plots, "decode", lambda model, z, x_like: x_like[: len(z)].clone())
    rec = Recorder(monkeypatch)
    # without per-dimension KL (a prior without one), traversals sweep the dimensions of
    # largest posterior-mean variance, and there is no KL picture
    result = diagnose_result(10, 40, kl_per_dim=False)
    paths = plots.plot_diagnostics(vae.model, torch.rand(40, 1, 6, 6), result, tmp_path)
    assert [p.rsplit("/", 1)[1] for p in paths] == [
        "embedding.png",
        "reconstructions.png",
        "samples.png",
        "traversals.png",
    ]
    assert rec.calls["embedding"][1] == {"method": "tsne", "max_points": 3000, "seed": 0}
    assert rec.calls["reconstructions"][1]["title"] == (
        "Data and reconstructions (x ~ p(x|E[z|x]), drawn pixel by pixel)"
    )
    assert rec.calls["samples"][1]["title"] == (
        "Samples from the prior (x ~ p(x|z), z ~ p(z), drawn pixel by pixel)"
    )
    variance = result["posterior_mean_variance"]
    assert rec.calls["traversals"][0][1] == torch.argsort(variance, descending=True)[:8].tolist()

    rec.calls.clear()
    flat = plots.plot_diagnostics(
        vae.model, torch.rand(40, 36), diagnose_result(10, 40), tmp_path / "flat"
    )
    assert [p.rsplit("/", 1)[1] for p in flat] == ["embedding.png", "kl_per_dim.png"]
    assert set(rec.calls) == {"embedding", "kl_per_dimension"}


def test_image_grids_show_probabilities_pixel_for_pixel_on_a_fixed_grey_scale():
    """Each panel maps [0, 1] to black..white whatever its range (a faint image stays faint),
    without smoothing; frames are hidden; row labels read horizontally, right-aligned."""
    rows = [torch.full((2, 4, 4), 0.2), torch.rand(1, 4, 4)]
    fig = plots.plot_image_rows(rows, row_labels=["a", "b"], col_labels=["c0", "c1"])
    axes = {
        (ax.get_subplotspec().rowspan.start, ax.get_subplotspec().colspan.start): ax
        for ax in fig.axes
    }
    assert len(axes) == 4 and not axes[(1, 1)].images  # the short row's panel is empty
    for ax in fig.axes:
        assert not any(spine.get_visible() for spine in ax.spines.values())
        for image in ax.images:
            assert image.get_clim() == (0, 1)
            assert image.get_cmap().name == "gray"
            assert image.get_interpolation() == "nearest"
    label = axes[(0, 0)].yaxis.label
    assert label.get_text() == "a" and label.get_rotation() == 0
    assert label.get_ha() == "right" and label.get_va() == "center" and label.get_fontsize() == 9
    assert axes[(0, 1)].title.get_fontsize() == 8
    # 0.9 inch a panel, plus margins for the labels
    assert tuple(fig.get_size_inches()) == pytest.approx((0.9 * 2 + 1.2, 0.9 * 2 + 0.6))


def test_reconstructions_are_ten_pairs_a_row_by_default():
    fig = plots.plot_reconstructions(torch.rand(12, 3, 3), torch.rand(12, 3, 3))
    assert [sum(c[0] is not None for c in r) for r in image_axes(fig)] == [10, 10, 2, 2]
