"""The figures of benchmarks/RESULTS.md, from the study's results.csv files and run folders.

    python benchmarks/study_plots.py \\
        --image benchmarks/results/pixelcnn_bmnist_cpu.csv \\
        --image benchmarks/results/pixelcnn_bmnist_cpu_sa.csv \\
        --latent benchmarks/results/mnist_mlp_sweep.csv \\
        --latent benchmarks/results/ptb_lstm_cpu.csv \\
        --tsne ../runs/pixelcnn_cpu/cells/seed=0_skip=true ../runs/pixelcnn_cpu/cells/seed=0_skip=false \\
        --out benchmarks/results/study

Writes into ``--out``:

* ``models.png``: KL, MI (with its ceiling log N), aggregate KL and active units of every
  finished cell of the ``--image`` files, one column per model (VAE, Skip-VAE, SA-VAE,
  Skip-SA-VAE), a dot per seed and a bar at the mean;
* ``nll_vs_mi.png``: IW-NLL against MI, one point per cell of the ``--image`` files;
* ``latent_size.png``: KL, MI, aggregate KL and AU against latent size, skip vs no skip (mean
  and min–max over seeds), one line per ``--latent`` file and model;
* ``tsne_<cell>.png``: t-SNE of the posterior means of the first 3,000 labelled MNIST test
  images (binarised as the accuracy metric binarises them), coloured by digit, for each
  ``--tsne`` run folder.

Only rows whose status is ``ok`` are drawn.
"""

import argparse
import csv
from collections import defaultdict
from pathlib import Path

METRICS = (
    ("kl", "KL (nats)"),
    ("mi", "MI (nats)"),
    ("agg_kl", "aggregate KL (nats)"),
    ("au", "active units"),
)


def read_rows(paths):
    rows = []
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                if row["status"] == "ok":
                    rows.append({**row, "source": Path(path).stem})
    return rows


def model_name(row) -> str:
    sa = row["inference"].startswith("semi-amortized")
    return ("Skip-" if row["skip"] == "True" else "") + ("SA-VAE" if sa else "VAE")


ORDER = ("VAE", "Skip-VAE", "SA-VAE", "Skip-SA-VAE")
COLOURS = {
    "VAE": "tab:blue",
    "Skip-VAE": "tab:orange",
    "SA-VAE": "tab:green",
    "Skip-SA-VAE": "tab:red",
}


def plot_models(rows, path, plt):
    groups = defaultdict(list)
    for row in rows:
        groups[model_name(row)].append(row)
    names = [n for n in ORDER if n in groups]
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.4 * len(METRICS), 3.4))
    for ax, (metric, label) in zip(axes, METRICS):
        for i, name in enumerate(names):
            values = [float(r[metric]) for r in groups[name]]
            ax.bar(i, sum(values) / len(values), color=COLOURS[name], alpha=0.35)
            ax.plot([i] * len(values), values, "o", color=COLOURS[name])
        if metric == "mi":
            ax.axhline(float(rows[0]["log_n"]), color="grey", ls="--", lw=1, label="log N")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=20)
        ax.set_title(label)
    fig.suptitle(
        f"{rows[0]['dataset']}, {rows[0]['decoder']} decoder, latent {rows[0]['latent_dim']} (test split; dot = seed)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_nll_vs_mi(rows, path, plt):
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    seen = set()
    for row in rows:
        name = model_name(row)
        ax.plot(
            float(row["mi"]),
            float(row["test_nll"]),
            "o",
            color=COLOURS[name],
            label=None if name in seen else name,
        )
        seen.add(name)
    ax.set_xlabel("MI (nats)")
    ax.set_ylabel("IW-NLL (nats, K = 500)")
    ax.legend(fontsize=7)
    ax.set_title(f"{rows[0]['dataset']}, latent {rows[0]['latent_dim']}: one point per cell")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latent_size(rows, path, plt):
    fig, axes = plt.subplots(1, len(METRICS), figsize=(3.4 * len(METRICS), 3.4))
    lines = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row["inference"] != "amortized" or row["grid"] not in ("latent", "latent32", "latent64"):
            continue
        lines[(row["source"], model_name(row))][int(row["latent_dim"])].append(row)
    for ax, (metric, label) in zip(axes, METRICS):
        for (source, name), by_size in sorted(lines.items()):
            sizes = sorted(by_size)
            values = [[float(r[metric]) for r in by_size[s]] for s in sizes]
            means = [sum(v) / len(v) for v in values]
            style = "-" if "mlp" in source else "--"
            ax.plot(sizes, means, style + "o", color=COLOURS[name], label=f"{name}, {source}")
            ax.fill_between(
                sizes,
                [min(v) for v in values],
                [max(v) for v in values],
                color=COLOURS[name],
                alpha=0.15,
            )
        if metric == "mi":  # the ceiling of the full-set estimator, per test set
            for log_n in sorted({round(float(r["log_n"]), 2) for r in rows}):
                ax.axhline(log_n, color="grey", lw=1, ls=":")
                ax.annotate(f"log N = {log_n}", (2, log_n), fontsize=7, va="bottom")
        if metric == "au":
            ax.plot([2, 64], [2, 64], color="grey", lw=1, ls=":", label="all units")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("latent size")
        ax.set_title(label)
    axes[0].legend(fontsize=6)
    fig.suptitle("Against latent size (mean, min–max over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tsne(run_dir, out, plt):
    from pyro_skipvae import SkipVAE
    from pyro_skipvae.data import default_binarization, load_dataset, prepare
    from pyro_skipvae.diagnostics.plots import plot_embedding, save_figure

    vae = SkipVAE.load(run_dir)
    splits = load_dataset("mnist")
    x = prepare(
        splits.test[:3000], vae.model.likelihood, binarization=default_binarization("mnist")
    )
    means, _ = vae.encode(x)
    name = ("Skip-VAE" if vae.config.skip else "VAE") + f" ({Path(run_dir).name})"
    fig = plot_embedding(
        means,
        splits.test_labels[:3000],
        title=f"{name}: posterior means of MNIST test images, t-SNE",
    )
    save_figure(fig, out / f"tsne_{Path(run_dir).name}.png")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", action="append", default=[], help="results.csv of image cells")
    parser.add_argument(
        "--latent", action="append", default=[], help="results.csv with latent-size grids"
    )
    parser.add_argument("--tsne", nargs="*", default=[], help="run folders to embed")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    image = read_rows(args.image)
    if image:
        plot_models(image, out / "models.png", plt)
        plot_nll_vs_mi(image, out / "nll_vs_mi.png", plt)
    if args.latent:
        plot_latent_size(read_rows(args.latent), out / "latent_size.png", plt)
    for run_dir in args.tsne:
        plot_tsne(run_dir, out, plt)
    print("\n".join(sorted(str(p) for p in out.glob("*.png"))))


if __name__ == "__main__":
    main()
