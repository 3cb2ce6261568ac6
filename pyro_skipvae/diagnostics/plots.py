"""Pictures of a fitted model: latent embedding, reconstructions, prior samples, per-dimension
KL and latent traversals. Each ``plot_*`` function takes tensors/arrays and returns a
matplotlib ``Figure``; :func:`save_figure` writes a PNG atomically. :func:`plot_diagnostics`
draws all of them for one :func:`~pyro_skipvae.diagnostics.diagnose` result, decoding codes
through the model with :func:`decode` and :func:`prior_sample`.

matplotlib is imported when a figure is drawn, not when pyro_skipvae is imported, and its
backend is left to the user (the ``skipvae`` command selects Agg).
"""

from pathlib import Path

import numpy as np
import torch
from pyro import poutine

from ..checkpoint import atomic_path
from ..sites import LATENT_SITE, OBSERVED_SITE


def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def _np(a):
    return (
        a.detach().cpu().double().numpy()
        if isinstance(a, torch.Tensor)
        else np.asarray(a, dtype=float)
    )


def is_image_shape(data_shape) -> bool:
    """True for ``(H, W)``, ``(1, H, W)`` or ``(3, H, W)``."""
    shape = tuple(data_shape)
    return len(shape) == 2 or (len(shape) == 3 and shape[0] in (1, 3))


def _to_image(x):
    x = _np(x)
    if x.ndim == 3:
        x = x[0] if x.shape[0] == 1 else np.transpose(x, (1, 2, 0))
    return np.clip(x, 0, 1)


def plot_embedding(codes, labels=None, *, method="tsne", max_points=3000, seed=0, title=None):
    """2-D map of posterior means coloured by label: t-SNE (default) or PCA.

    t-SNE is O(n log n) but slow on 2 cores beyond a few thousand points, so at most
    ``max_points`` points (the first ones) are embedded; the title says how many.
    """
    plt = _pyplot()
    codes = _np(codes)[:max_points]
    labels = None if labels is None else _np(labels)[:max_points]
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30, max(2, (len(codes) - 1) // 3)))
        xy = TSNE(
            n_components=2, perplexity=perplexity, init="pca", random_state=seed
        ).fit_transform(codes)
        name = f"t-SNE (perplexity {perplexity:g})"
    elif method == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=2, random_state=seed).fit(codes)
        xy = pca.transform(codes)
        name = f"PCA ({100 * pca.explained_variance_ratio_.sum():.0f}% of variance)"
    else:
        raise ValueError(f"unknown embedding method {method!r}; expected 'tsne' or 'pca'")
    fig, ax = plt.subplots(figsize=(7, 6.5))
    if labels is None:
        ax.scatter(xy[:, 0], xy[:, 1], s=4, alpha=0.6)
    else:
        classes = np.unique(labels)
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for i, c in enumerate(classes):
            mask = labels == c
            ax.scatter(
                xy[mask, 0], xy[mask, 1], s=4, alpha=0.7, color=cmap(i % cmap.N), label=f"{c:g}"
            )
        ax.legend(
            title="label", markerscale=4, fontsize=8, loc="center left", bbox_to_anchor=(1.0, 0.5)
        )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"Posterior means, {name}, {len(codes)} points")
    fig.tight_layout()
    return fig


def plot_image_rows(rows, *, row_labels=None, title=None, col_labels=None):
    """A grid of images: ``rows`` is a list of tensors of shape ``(n_cols, *image_shape)``."""
    plt = _pyplot()
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    size = 0.9
    fig, axes = plt.subplots(
        n_rows, n_cols, figsize=(size * n_cols + 1.2, size * n_rows + 0.6), squeeze=False
    )
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if j < len(row):
                ax.imshow(_to_image(row[j]), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            if j == 0 and row_labels is not None:
                ax.set_ylabel(row_labels[i], rotation=0, ha="right", va="center", fontsize=9)
            if i == 0 and col_labels is not None:
                ax.set_title(col_labels[j], fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_reconstructions(originals, reconstructions, *, num_columns=10, title=None):
    """Pairs of rows: originals above their reconstructions (decoded posterior means)."""
    rows, labels = [], []
    for start in range(0, len(originals), num_columns):
        rows += [
            originals[start : start + num_columns],
            reconstructions[start : start + num_columns],
        ]
        labels += ["data", "recon."]
    return plot_image_rows(
        rows, row_labels=labels, title=title or "Data and reconstructions (mean of p(x|E[z|x]))"
    )


def plot_samples(samples, *, num_columns=10, title=None):
    """Decoded samples from the prior, ``num_columns`` a row."""
    rows = [samples[s : s + num_columns] for s in range(0, len(samples), num_columns)]
    return plot_image_rows(rows, title=title or "Samples from the prior (mean of p(x|z), z ~ p(z))")


def plot_kl_per_dimension(kl_per_dim, *, variances=None, threshold=0.01, title=None):
    """Bars of E_x KL(q(z_d|x) ‖ p(z_d)) per dimension, active units (Var_x E[z_d|x] > δ)
    in a strong colour, inactive ones in grey."""
    plt = _pyplot()
    kl = _np(kl_per_dim)
    d = np.arange(len(kl))
    active = np.ones(len(kl), bool) if variances is None else _np(variances) > threshold
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(kl) + 2), 3.8))
    ax.bar(d[active], kl[active], color="tab:blue", label=f"active (Var E[z_d|x] > {threshold:g})")
    if (~active).any():
        ax.bar(d[~active], kl[~active], color="0.7", label="inactive")
    ax.set_xlabel("latent dimension d")
    ax.set_ylabel("KL (nats)")
    ax.set_xlim(-0.7, len(kl) - 0.3)
    ax.legend(fontsize=8)
    ax.set_title(
        title
        or f"KL per dimension: total {kl.sum():.2f} nats, {int(active.sum())} of {len(kl)} active"
    )
    fig.tight_layout()
    return fig


def plot_traversals(images, dims, values, *, title=None):
    """Latent traversals: ``images[i, j]`` decodes z with dimension ``dims[i]`` set to ``values[j]``."""
    rows = [images[i] for i in range(len(dims))]
    return plot_image_rows(
        rows,
        row_labels=[f"z{d}" for d in dims],
        col_labels=[f"{v:+.1f}" for v in values],
        title=title or "Latent traversals (others at a datapoint's posterior mean)",
    )


def save_figure(fig, path, *, dpi=110) -> None:
    """Write ``fig`` as a PNG at ``path`` atomically and close it."""
    plt = _pyplot()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)


# ------------------------------------------------------------- the PNGs of one diagnosis
@torch.no_grad()
def decode(model, z, x_like):
    """What codes ``z`` of shape ``(n, D)`` look like: the mean of p(x | z), read from the
    model's site ``"x"`` with ``z`` conditioned (``x_like``: any n datapoints of the right
    shape). For an autoregressive decoder (``model.decoder.autoregressive``) that mean would
    be teacher-forced on ``x_like`` and look right whatever z is, so x is *sampled* instead,
    position by position (:meth:`~pyro_skipvae.models.Decoder.sample`)."""
    decoder = getattr(model, "decoder", None)
    if getattr(decoder, "autoregressive", False):
        return decoder.sample(z, model.likelihood)
    trace = poutine.trace(poutine.condition(model, data={LATENT_SITE: z})).get_trace(x_like)
    return trace.nodes[OBSERVED_SITE]["fn"].mean


@torch.no_grad()
def prior_sample(model, x_like):
    """z ~ p(z), one per row of ``x_like``, read from the model's site ``"z"``."""
    trace = poutine.trace(poutine.block(model, hide=[OBSERVED_SITE])).get_trace(x_like)
    return trace.nodes[LATENT_SITE]["fn"].sample()


def plot_diagnostics(
    model,
    data,
    result,
    out_dir,
    *,
    labels=None,
    embedding="tsne",
    max_points=3000,
    prefix="",
    seed=0,
) -> list[str]:
    """Write the PNGs for a :func:`~pyro_skipvae.diagnostics.diagnose` result into
    ``out_dir``; return their paths.

    ``embedding.png`` (t-SNE or PCA of posterior means, coloured by label), and for image
    data ``reconstructions.png``, ``samples.png`` (decoded prior samples),
    ``traversals.png`` (the 8 dimensions with most KL, ±3 around one datapoint's code),
    plus ``kl_per_dim.png``. Images are decoded by :func:`decode` (sampled, for
    autoregressive decoders).
    """
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    paths = []

    def save(fig, name):
        path = out_dir / f"{prefix}{name}"
        save_figure(fig, path)
        paths.append(str(path))

    codes = result["codes"]
    save(
        plot_embedding(codes, labels, method=embedding, max_points=max_points, seed=seed),
        "embedding.png",
    )
    if result["kl_per_dim"] is not None:
        save(
            plot_kl_per_dimension(
                result["kl_per_dim"],
                variances=result["posterior_mean_variance"],
                threshold=result["metrics"]["au_threshold"],
            ),
            "kl_per_dim.png",
        )
    if is_image_shape(data.shape[1:]):
        for name, fig in _image_figures(model, data, result):
            save(fig, name)
    return paths


def _image_figures(model, data, result):
    """``(file name, figure)`` of the reconstructions, prior samples and traversals."""
    codes = result["codes"]
    # Autoregressive decoders' pictures are draws, not means (see decode): say so.
    drawn = getattr(getattr(model, "decoder", None), "autoregressive", False)
    x = data[:20]
    yield (
        "reconstructions.png",
        plot_reconstructions(
            x,
            decode(model, codes[:20], x),
            title="Data and reconstructions (x ~ p(x|E[z|x]), drawn pixel by pixel)"
            if drawn
            else None,
        ),
    )
    x_like = data[:30]
    yield (
        "samples.png",
        plot_samples(
            decode(model, prior_sample(model, x_like), x_like),
            title="Samples from the prior (x ~ p(x|z), z ~ p(z), drawn pixel by pixel)"
            if drawn
            else None,
        ),
    )
    kl = result["kl_per_dim"]
    if kl is None:
        kl = result["posterior_mean_variance"]
    dims = torch.argsort(torch.as_tensor(kl), descending=True)[:8].tolist()
    values = torch.linspace(-3, 3, 9)
    z = codes[0].repeat(len(dims), len(values), 1)
    for i, d in enumerate(dims):
        z[i, :, d] = values.to(z.dtype)
    flat = z.reshape(-1, z.shape[-1])
    data_shape = tuple(data.shape[1:])
    x_like = data[:1].expand(flat.shape[0], *data_shape)
    images = decode(model, flat, x_like).reshape(len(dims), len(values), *data_shape)
    yield (
        "traversals.png",
        plot_traversals(
            images,
            dims,
            values.tolist(),
            title="Latent traversals of the 8 dims with most KL (others at E[z|x_0])",
        ),
    )
