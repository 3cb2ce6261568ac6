"""Data sets as tensors: named image and text data sets, users' files, and binarisation.

>>> splits = load_dataset("mnist", train_size=1000)      # doctest: +SKIP
>>> splits.train.shape, splits.val.shape, splits.test.shape
(torch.Size([1000, 1, 28, 28]), torch.Size([10000, 1, 28, 28]), torch.Size([10000, 1, 28, 28]))
>>> ptb = load_dataset("ptb")                            # doctest: +SKIP
>>> ptb.train.shape, len(ptb.vocabulary)                 # padded token ids, see data.text
(torch.Size([42068, 83]), 10003)
"""

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError, DataError
from .files import load_tensor_file
from .images import download as download_images
from .images import load_images
from .matlab import BINARIZED_MNIST_FOLDER, OMNIGLOT_FILE, load_binarized_mnist, load_omniglot
from .paths import DATA_DIR_ENV, resolve_data_dir
from .text import TEXT_DATASETS, Vocabulary, check_max_length, load_text_splits

#: the named image data sets
IMAGE_DATASETS = ("mnist", "fashion-mnist", "binarized-mnist", "omniglot")
#: named data sets in the torchvision layout → their folder
TORCHVISION_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
#: the binarisation each named data set gets by default: resampled every epoch for grey-scale
#: images (as in the papers' code, Omniglot as in Burda et al. 2016), none for data that are
#: binary already; files: none
DEFAULT_BINARIZATION = {
    "mnist": "dynamic",
    "fashion-mnist": "dynamic",
    "binarized-mnist": "none",
    "omniglot": "dynamic",
}
#: what a data folder must hold for the data sets read from MATLAB files, and where it comes from
_MATLAB_FILES = {
    "binarized-mnist": (
        f"{BINARIZED_MNIST_FOLDER}/binarized_mnist_*.mat",
        f"expected {BINARIZED_MNIST_FOLDER}/binarized_mnist_{{train,valid,test}}.mat (static "
        "binarisation of Larochelle & Murray 2011, MATLAB files holding X of shape N × 784)",
    ),
    "omniglot": (
        OMNIGLOT_FILE,
        f"expected {OMNIGLOT_FILE}, the 28×28 Omniglot of Burda et al. 2016 (file "
        "datasets/OMNIGLOT/chardata.mat of github.com/yburda/iwae); it is not downloaded "
        "automatically",
    ),
}
#: number of training images held out for validation (the last ones), as in the papers' code
NUM_VALIDATION = 10_000
BINARIZATIONS = ("dynamic", "threshold", "none")
#: evaluation data are binarised once with this fixed seed, so every run (whatever its own
#: seed) is scored on the same binary images
EVAL_BINARIZATION_SEED = 0


@dataclass
class DataSplits:
    """Train/validation/test tensors of one data set (labels where it has them; the
    vocabulary of a text data set, whose tensors hold padded token ids)."""

    name: str
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor | None = None
    train_labels: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    vocabulary: Vocabulary | None = None

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(data, labels)`` of split ``"train"``, ``"val"`` or ``"test"``."""
        data = getattr(self, name, None) if name in ("train", "val", "test") else None
        if data is None:
            raise DataError(f"{self.name} has no {name!r} split")
        return data, getattr(self, f"{name}_labels")


def load_dataset(
    dataset: str,
    *,
    data_dir: str | os.PathLike | None = None,
    train_size: int | None = None,
    val_size: int | None = None,
    download: bool = False,
    max_length: int | None = None,
) -> DataSplits:
    """Load a named data set (:data:`IMAGE_DATASETS`, ``"ptb"``, ``"yahoo"``) or a
    ``.pt``/``.npy`` file.

    Image data sets are floats of shape ``(N, 1, 28, 28)``:

    * ``"mnist"``, ``"fashion-mnist"``: intensities in [0, 1]; the last 10,000 of the 60,000
      training images are the validation split (Burda et al. 2016; Kim et al. 2018), the
      10,000 test images the test split; digit / clothing labels;
    * ``"binarized-mnist"``: static binarisation, values in {0, 1}, 50,000 / 10,000 / 10,000
      images as published, no labels (:func:`~.matlab.load_binarized_mnist`);
    * ``"omniglot"``: intensities in [0, 1], 23,000 / 1,345 / 8,070 images, alphabet labels
      (:func:`~.matlab.load_omniglot`); the file must be supplied by the user.

    :data:`DEFAULT_BINARIZATION` says how each is binarised by default. Files: see
    :func:`~pyro_skipvae.data.files.load_tensor_file`; without a ``"val"`` entry the last
    10% of ``"train"`` is held out. Text data sets (Penn Treebank, Yahoo Answers): the
    corpus's own splits as padded token ids with a :class:`~.text.Vocabulary` (see
    :mod:`pyro_skipvae.data.text`; Yahoo's 100,000-document training split must be supplied
    by the user, and a missing file is a :class:`DataError` naming it).

    Data folders: see :mod:`pyro_skipvae.data.paths`.

    :param int train_size: keep only the first ``train_size`` training examples.
    :param int val_size: keep only the first ``val_size`` validation examples.
    :param bool download: fetch MNIST / Fashion-MNIST with torchvision's downloader (md5
        checked) when no data folder holds them: into ``data_dir`` (or
        ``$SKIPVAE_DATA_DIR``) if given, else into the user data folder. The other data sets
        are never downloaded.
    :param int max_length: text only: drop sentences of more than this many words from every
        split (default None: keep all); see :mod:`pyro_skipvae.data.text`.
    :raises DataError: the data set's files are missing (the message says which files, and
        where they come from) or malformed.
    """
    for option, value in (("train_size", train_size), ("val_size", val_size)):
        if value is not None and value < 1:
            raise ConfigError(f"{option} must be a positive integer, found {value}")
    check_max_length(max_length)
    if max_length is not None and dataset not in TEXT_DATASETS:
        raise ConfigError(
            f"max_length applies to the text data sets ({', '.join(TEXT_DATASETS)}), "
            f"not to {dataset!r}"
        )
    if dataset in TEXT_DATASETS:
        splits = _text(dataset, data_dir, max_length)
    elif dataset in TORCHVISION_FOLDERS:
        splits = _torchvision_images(dataset, data_dir, download)
    elif dataset in _MATLAB_FILES:
        splits = _matlab_images(dataset, data_dir)
    elif Path(dataset).suffix in (".pt", ".npy"):
        splits = _tensor_file(dataset)
    else:
        raise ConfigError(
            f"unknown dataset {dataset!r}; expected one of "
            f"{', '.join([*IMAGE_DATASETS, *TEXT_DATASETS])} or a path to a .pt/.npy file"
        )
    if train_size is not None:
        splits.train = splits.train[:train_size]
        splits.train_labels = (
            None if splits.train_labels is None else splits.train_labels[:train_size]
        )
    if val_size is not None:
        splits.val = splits.val[:val_size]
        splits.val_labels = None if splits.val_labels is None else splits.val_labels[:val_size]
    return splits


def _text(dataset, data_dir, max_length) -> DataSplits:
    folder, stem = TEXT_DATASETS[dataset]
    # The dictionary or validation file locates the folder, so that a missing training file
    # is reported by name rather than as a missing folder.
    root = resolve_data_dir(data_dir, expected=f"{folder}/{stem}.valid.txt*")
    train, val, test, vocabulary = load_text_splits(dataset, root, max_length=max_length)
    return DataSplits(dataset, train, val, test, vocabulary=vocabulary)


def _torchvision_images(dataset, data_dir, download) -> DataSplits:
    folder = TORCHVISION_FOLDERS[dataset]
    try:
        root = resolve_data_dir(data_dir, expected=f"{folder}/raw/*-ubyte.gz")
    except DataError:
        if not download:
            raise
        explicit = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
        root = download_images(folder, explicit)
    images, labels = load_images(folder, root, train=True)
    test, test_labels = load_images(folder, root, train=False)
    cut = images.shape[0] - NUM_VALIDATION
    return DataSplits(
        dataset, images[:cut], images[cut:], test, labels[:cut], labels[cut:], test_labels
    )


def _matlab_images(dataset, data_dir) -> DataSplits:
    expected, hint = _MATLAB_FILES[dataset]
    try:
        root = resolve_data_dir(data_dir, expected=expected)
    except DataError as e:
        raise DataError(f"{dataset}: {e}; {hint}") from None
    if dataset == "binarized-mnist":
        return DataSplits(dataset, *load_binarized_mnist(root))
    return DataSplits(dataset, **load_omniglot(root))


def _tensor_file(path) -> DataSplits:
    content = load_tensor_file(path)
    train, labels = content["train"], content.get("train_labels")
    if "val" in content:
        val, val_labels = content["val"], content.get("val_labels")
    else:  # hold out the last 10% of the training examples
        cut = train.shape[0] - max(1, train.shape[0] // 10)
        if cut < 1:
            raise DataError(
                f"{path}: need at least 2 training examples to hold one out, found {train.shape[0]}"
            )
        val, val_labels = train[cut:], None if labels is None else labels[cut:]
        train, labels = train[:cut], None if labels is None else labels[:cut]
    test, test_labels = content.get("test"), content.get("test_labels")
    return DataSplits(Path(path).name, train, val, test, labels, val_labels, test_labels)


def default_binarization(dataset: str) -> str:
    """The binarisation ``dataset`` gets unless one is chosen (:data:`DEFAULT_BINARIZATION`;
    ``"none"`` for files)."""
    return DEFAULT_BINARIZATION.get(dataset, "none")


def binarize(x: torch.Tensor, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Turn intensities in [0, 1] into binary data.

    * ``"dynamic"``: x_b ~ Bernoulli(x), a fresh draw each call (Salakhutdinov & Murray 2008);
    * ``"threshold"``: x_b = 1[x > 0.5];
    * ``"none"``: x unchanged.
    """
    if mode == "dynamic":
        if x.min() < 0 or x.max() > 1:
            raise DataError(
                f"dynamic binarisation needs intensities in [0, 1], found range "
                f"[{x.min().item():.3g}, {x.max().item():.3g}]"
            )
        return torch.bernoulli(x, generator=generator)
    if mode == "threshold":
        return (x > 0.5).to(x.dtype)
    if mode == "none":
        return x
    raise ConfigError(f"unknown binarization {mode!r}; expected one of: {', '.join(BINARIZATIONS)}")


def prepare(
    x, likelihood, *, binarization: str = "none", name: str = "data", training: bool = False
):
    """Check ``x`` and return what the likelihood will see: the one place data are validated.

    With ``binarization="none"`` the data must already lie in the likelihood's support
    (:meth:`~pyro_skipvae.models.Likelihood.validate`). Otherwise ``x`` holds intensities in
    [0, 1] that are binarised here, once with the fixed evaluation seed, except training data
    under ``"dynamic"``, which are returned as intensities and binarised afresh every epoch.

    :raises DataError: not a tensor, wrong shape, non-finite, outside [0, 1] or the support.
    :raises ConfigError: unknown ``binarization``.
    """
    if not isinstance(x, torch.Tensor):
        raise DataError(f"{name}: expected a torch.Tensor, found {type(x).__name__}")
    if binarization not in BINARIZATIONS:
        raise ConfigError(
            f"unknown binarize {binarization!r}; expected one of: {', '.join(BINARIZATIONS)}"
        )
    if binarization == "none":
        likelihood.validate(x, name)
        return x
    x = x.float()
    if not torch.isfinite(x).all():
        raise DataError(
            f"{name}: expected finite values, found {int((~torch.isfinite(x)).sum())} NaN/inf entries"
        )
    if x.numel() and (x.min() < 0 or x.max() > 1):
        raise DataError(
            f"{name}: binarize={binarization!r} expects intensities in [0, 1], found range "
            f"[{x.min().item():.3g}, {x.max().item():.3g}]"
        )
    likelihood.validate(binarize(x, "threshold"), name)
    if training and binarization == "dynamic":
        return x  # binarised afresh every epoch
    return binarize_for_evaluation(x, binarization)


def binarize_for_evaluation(x: torch.Tensor, mode: str) -> torch.Tensor:
    """:func:`binarize` with the fixed seed :data:`EVAL_BINARIZATION_SEED`: the same binary
    images on every call, for validation and test scores comparable across runs."""
    return binarize(x.float(), mode, torch.Generator().manual_seed(EVAL_BINARIZATION_SEED))


__all__ = [
    "BINARIZATIONS",
    "DEFAULT_BINARIZATION",
    "EVAL_BINARIZATION_SEED",
    "DataSplits",
    "IMAGE_DATASETS",
    "TEXT_DATASETS",
    "Vocabulary",
    "binarize",
    "binarize_for_evaluation",
    "default_binarization",
    "load_dataset",
    "prepare",
    "resolve_data_dir",
]
