"""The named image data sets: static binarised MNIST and Fashion-MNIST (real files from the
shared data folder), Omniglot's chardata.mat layout (a small labelled synthetic file written
here: the real file is not in the shared data), and the CLI's view of them."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy.io import savemat

from pyro_skipvae.cli import main as cli_main
from pyro_skipvae.cli import options as cli_options
from pyro_skipvae.data import (
    DEFAULT_BINARIZATION,
    IMAGE_DATASETS,
    default_binarization,
    load_dataset,
)
from pyro_skipvae.data.matlab import OMNIGLOT_SHUFFLE_SEED, OMNIGLOT_VALIDATION
from pyro_skipvae.errors import DataError


def test_cli_mirrors_the_library_data_sets():
    assert cli_options.IMAGE_DATASETS == IMAGE_DATASETS
    assert set(DEFAULT_BINARIZATION) == set(IMAGE_DATASETS)
    assert default_binarization("binarized-mnist") == "none"
    assert default_binarization("omniglot") == default_binarization("mnist") == "dynamic"
    assert default_binarization("data.pt") == "none"


def test_static_binarized_mnist(data_dir):
    splits = load_dataset("binarized-mnist", data_dir=data_dir)
    assert splits.train.shape == (50_000, 1, 28, 28)
    assert splits.val.shape == splits.test.shape == (10_000, 1, 28, 28)
    for x in (splits.train, splits.val, splits.test):
        assert ((x == 0) | (x == 1)).all()
    assert splits.train_labels is None and splits.test_labels is None  # the files have none
    # MNIST-like ink: about 13% of the pixels are on, in the middle rather than the border
    assert 0.10 < splits.test.mean().item() < 0.16
    assert splits.test[:, :, 12:16, 12:16].mean() > 5 * splits.test[:, :, :2].mean()


def fit(tmp_path, *args):
    return CliRunner().invoke(
        cli_main.cli,
        [
            "fit",
            *args,
            "--train-size",
            "100",
            "--val-size",
            "50",
            "--num-epochs",
            "1",
            "--latent-dim",
            "2",
            "--hidden-dims",
            "16",
            "--quiet",
            "--out",
            str(tmp_path / "run"),
        ],
        catch_exceptions=False,
    )


@pytest.mark.parametrize(
    "dataset,binarize", [("fashion-mnist", "dynamic"), ("binarized-mnist", "none")]
)
def test_cli_fits_each_shared_data_set_with_its_binarisation(tmp_path, data_dir, dataset, binarize):
    result = fit(tmp_path, "--dataset", dataset, "--data-dir", str(data_dir))
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["run"]["dataset"] == dataset
    assert config["train"]["binarize"] == binarize


def test_fashion_mnist_has_its_labels(data_dir):
    splits = load_dataset("fashion-mnist", data_dir=data_dir, train_size=2000, val_size=10)
    assert splits.train.shape == (2000, 1, 28, 28) and splits.test.shape == (10_000, 1, 28, 28)
    assert set(splits.train_labels.tolist()) == set(range(10))
    assert 0 <= splits.train.min() and splits.train.max() <= 1


def synthetic_omniglot(path, num_train=1400, num_test=12, num_alphabets=5):
    """A labelled synthetic chardata.mat (NOT Omniglot): image n has its index written in
    its first row (pixel (0, j) = bit j of n) and an asymmetric mark, pixel (5, 20) on,
    so both the image order and the orientation can be checked after loading. Stored as the
    real file: one image per column, column-major; alphabets one-hot (alphabets × N)."""

    def images(n):
        img = np.zeros((n, 28, 28))
        for i in range(n):
            img[i, 0, :16] = [(i >> j) & 1 for j in range(16)]
        img[:, 5, 20] = 1.0
        img[:, 10:12, 3] = 0.5  # a grey-level stroke: intensities, not binary
        return img

    train, test = images(num_train), images(num_test)
    alphabet = lambda n: np.arange(n) % num_alphabets  # noqa: E731
    one_hot = lambda n: np.eye(num_alphabets)[alphabet(n)].T  # noqa: E731
    savemat(
        path / "chardata.mat",
        {
            "data": train.reshape(num_train, -1, order="F").T,  # column n = image n, column-major
            "testdata": test.reshape(num_test, -1, order="F").T,
            "target": one_hot(num_train),
            "testtarget": one_hot(num_test),
        },
    )
    return alphabet


def decode_index(images):
    bits = images[:, 0, 0, :16].round().long()
    return (bits * (2 ** torch.arange(16))).sum(-1)


def test_omniglot_loader_reads_the_iwae_layout(tmp_path):
    (tmp_path / "omniglot").mkdir()
    alphabet = synthetic_omniglot(tmp_path / "omniglot")
    splits = load_dataset("omniglot", data_dir=tmp_path)
    n_val = OMNIGLOT_VALIDATION
    assert splits.train.shape == (1400 - n_val, 1, 28, 28)
    assert splits.val.shape == (n_val, 1, 28, 28) and splits.test.shape == (12, 1, 28, 28)
    for x in (splits.train, splits.val, splits.test):
        assert (x[:, 0, 5, 20] == 1).all() and x[:, 0, 20, 5].sum() == 0  # not transposed
        assert (x[:, 0, 10, 3] == 0.5).all()
    # the IWAE split: the last 1,345 images of RandomState(123).permutation(N) validate
    order = np.random.RandomState(OMNIGLOT_SHUFFLE_SEED).permutation(1400)
    assert decode_index(splits.val).tolist() == order[-n_val:].tolist()
    assert decode_index(splits.train).tolist() == order[:-n_val].tolist()
    assert decode_index(splits.test).tolist() == list(range(12))
    # labels travel with their images
    for images, labels in ((splits.train, splits.train_labels), (splits.val, splits.val_labels)):
        assert labels.tolist() == alphabet(1400)[decode_index(images).numpy()].tolist()
    assert splits.test_labels.tolist() == alphabet(12).tolist()


def test_missing_omniglot_names_the_file_and_its_source(tmp_path):
    with pytest.raises(DataError, match=r"omniglot/chardata\.mat.*yburda/iwae"):
        load_dataset("omniglot", data_dir=tmp_path)
    result = fit(tmp_path, "--dataset", "omniglot", "--data-dir", str(tmp_path))
    assert result.exit_code == 1
    assert "chardata.mat" in result.output and "not downloaded" in result.output


def test_malformed_omniglot_is_a_data_error(tmp_path):
    (tmp_path / "omniglot").mkdir()
    savemat(tmp_path / "omniglot" / "chardata.mat", {"data": np.zeros((100, 3))})
    with pytest.raises(DataError, match=r"data of shape \(784, N\)"):
        load_dataset("omniglot", data_dir=tmp_path)


def test_pixelcnn_run_fits_and_diagnoses(tmp_path, data_dir):
    """End to end on real MNIST with a tiny PixelCNN and conv encoder: fit, then diagnose
    with the IW-NLL and accuracy (the pictures: tests/test_pixelcnn.py)."""
    out = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(
        cli_main.cli,
        [
            "fit",
            "--data-dir",
            str(data_dir),
            "--decoder",
            "pixelcnn",
            "--decoder-option",
            "num_layers=2",
            "--decoder-option",
            "channels=4",
            "--encoder",
            "conv",
            "--encoder-option",
            "channels=4",
            "--latent-dim",
            "2",
            "--train-size",
            "100",
            "--val-size",
            "50",
            "--num-epochs",
            "1",
            "--quiet",
            "--out",
            str(out),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["decoder_options"] == {
        "num_layers": 2,
        "channels": 4,
        "kernel_sizes": None,
        "z_maps": 1,
    }
    result = runner.invoke(
        cli_main.cli,
        [
            "diagnose",
            str(out),
            "--data-dir",
            str(data_dir),
            "--eval-size",
            "40",
            "--num-samples",
            "25",
            "--classifier-train-size",
            "60",
            "--no-plots",
            "--quiet",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "diagnostics.json").read_text())
    assert metrics["decoder"] == "pixelcnn" and metrics["nll_num_samples"] == 25
    # the importance-weighted bound is the tighter one (up to Monte-Carlo noise)
    assert metrics["nll"] <= -metrics["elbo"] + 3 * metrics["elbo_se"]
    assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["accuracy_knn"] <= 1


def test_diagnose_scores_a_run_on_another_data_set(tmp_path, data_dir):
    """A binarized-mnist run (no labels) is scored on labelled MNIST, binarised once with the
    fixed seed, so the accuracy can be measured."""
    runner = CliRunner()
    assert fit(tmp_path, "--dataset", "binarized-mnist", "--data-dir", str(data_dir)).exit_code == 0
    common = ["--data-dir", str(data_dir), "--eval-size", "60", "--num-samples", "0"]
    common += ["--classifier-train-size", "100", "--no-plots", "--quiet"]
    own = runner.invoke(cli_main.cli, ["diagnose", str(tmp_path / "run"), *common])
    assert own.exit_code == 0, own.output
    assert "accuracy" not in json.loads((tmp_path / "run" / "diagnostics.json").read_text())
    out = tmp_path / "on-mnist.json"
    other = runner.invoke(
        cli_main.cli,
        ["diagnose", str(tmp_path / "run"), "--dataset", "mnist", "--out", str(out), *common],
    )
    assert other.exit_code == 0, other.output
    assert "mnist test split" in other.output
    metrics = json.loads(out.read_text())
    assert metrics["dataset"] == "mnist" and metrics["trained_on"] == "binarized-mnist"
    assert metrics["binarize"] == "dynamic" and metrics["binarization_seed"] == 0
    assert 0 <= metrics["accuracy"] <= 1 and metrics["classifier_num_train"] == 100
