"""Image data sets stored as MATLAB files, read with :func:`scipy.io.loadmat`.

* **Static binarised MNIST** (Larochelle & Murray 2011): ``binarized_mnist/binarized_mnist_
  {train,valid,test}.mat``, each holding ``X`` of shape ``(N, 784)`` with values in {0, 1},
  rows in row-major 28×28 pixel order; 50,000 / 10,000 / 10,000 images, no labels (the
  files in shared/data are a MAT re-save of the ``.amat`` files, see its SOURCES.md).
* **Omniglot** 28×28 as used by Burda et al. (2016, IWAE) and Kim et al. (2018, SA-VAE):
  ``omniglot/chardata.mat`` with ``data`` (784 × 24,345) and ``testdata`` (784 × 8,070),
  intensities in [0, 1], one image per *column*, stored column-major (MATLAB's order); and
  ``target`` / ``testtarget`` (50 × N one-hot alphabet labels). Read as in yburda/iwae
  ``datasets.py`` (``binarized_shuffled_omniglot``): transpose, reshape each row to 28×28
  in Fortran order; the last 1,345 training images of the permutation
  ``numpy.random.RandomState(123).permutation(24345)`` are the validation split. (SA-VAE's
  ``preprocess_img.py`` reads the images the same way but holds out 2,000 after an
  unseeded shuffle; the IWAE split is reproducible, so it is used here.)
"""

from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

IMAGE_SIDE = 28
BINARIZED_MNIST_FOLDER = "binarized_mnist"
BINARIZED_MNIST_SPLITS = {"train": "train", "val": "valid", "test": "test"}
OMNIGLOT_FILE = "omniglot/chardata.mat"
#: validation images and the seed of the permutation that picks them (Burda et al. 2016)
OMNIGLOT_VALIDATION = 1345
OMNIGLOT_SHUFFLE_SEED = 123


def _loadmat(path: Path) -> dict:
    from scipy.io import loadmat

    try:
        return loadmat(path)
    except Exception as e:  # scipy raises ValueError, OSError, MatReadError, ...
        raise DataError(f"{path} is not a readable MATLAB file ({type(e).__name__}: {e})") from None


def _variable(content: dict, name: str, path: Path) -> np.ndarray:
    if name not in content:
        found = sorted(k for k in content if not k.startswith("__"))
        raise DataError(f"{path}: expected a variable {name!r}, found {found}")
    return np.asarray(content[name])


def _images(rows: np.ndarray, path: Path, what: str) -> torch.Tensor:
    """``(N, 784)`` row-major pixels in [0, 1] → float tensor ``(N, 1, 28, 28)``."""
    if rows.ndim != 2 or rows.shape[1] != IMAGE_SIDE**2:
        raise DataError(f"{path}: expected {what} of shape (N, 784), found {rows.shape}")
    images = torch.from_numpy(rows.astype(np.float32))
    if not torch.isfinite(images).all() or images.min() < 0 or images.max() > 1:
        raise DataError(
            f"{path}: expected {what} with values in [0, 1], found range "
            f"[{images.min().item():.3g}, {images.max().item():.3g}]"
        )
    return images.view(-1, 1, IMAGE_SIDE, IMAGE_SIDE)


def load_binarized_mnist(root: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Train, validation and test images of static binarised MNIST, ``(N, 1, 28, 28)``
    floats in {0, 1}.

    :raises DataError: a missing or unreadable file, no ``X``, wrong shape or values.
    """
    out = []
    for stem in BINARIZED_MNIST_SPLITS.values():
        path = Path(root) / BINARIZED_MNIST_FOLDER / f"binarized_mnist_{stem}.mat"
        if not path.is_file():
            raise DataError(f"binarized-mnist: expected {path}, but it does not exist")
        images = _images(_variable(_loadmat(path), "X", path), path, "X")
        if not ((images == 0) | (images == 1)).all():
            raise DataError(f"{path}: expected binary values in X, found others")
        out.append(images)
    return tuple(out)


def _alphabets(content, name, num_images, path):
    """Alphabet index per image from a one-hot ``(num_alphabets, N)`` variable, or None."""
    if name not in content:
        return None
    one_hot = np.asarray(content[name])
    if one_hot.ndim != 2 or one_hot.shape[1] != num_images:
        raise DataError(
            f"{path}: expected {name} of shape (alphabets, {num_images}), found {one_hot.shape}"
        )
    return torch.from_numpy(one_hot.argmax(0).astype(np.int64))


def load_omniglot(root: Path) -> dict[str, torch.Tensor | None]:
    """Omniglot from ``<root>/omniglot/chardata.mat``: ``train``, ``val``, ``test`` images
    ``(N, 1, 28, 28)`` with intensities in [0, 1] and ``*_labels`` (alphabet index, or None
    when the file has no ``target`` / ``testtarget``).

    :raises DataError: unreadable file, missing ``data`` / ``testdata``, wrong shapes.
    """
    path = Path(root) / OMNIGLOT_FILE
    content = _loadmat(path)
    splits = {}
    for split, name, labels in (("train", "data", "target"), ("test", "testdata", "testtarget")):
        columns = _variable(content, name, path)
        if columns.ndim != 2 or columns.shape[0] != IMAGE_SIDE**2:
            raise DataError(f"{path}: expected {name} of shape (784, N), found {columns.shape}")
        # One image per column, column-major: transpose, then read each row in Fortran order.
        rows = columns.T.reshape(-1, IMAGE_SIDE, IMAGE_SIDE).transpose(0, 2, 1)
        splits[split] = _images(rows.reshape(-1, IMAGE_SIDE**2), path, name)
        splits[f"{split}_labels"] = _alphabets(content, labels, columns.shape[1], path)
    n = splits["train"].shape[0]
    if n <= OMNIGLOT_VALIDATION:
        raise DataError(
            f"{path}: expected more than {OMNIGLOT_VALIDATION} training images, found {n}"
        )
    order = torch.from_numpy(np.random.RandomState(OMNIGLOT_SHUFFLE_SEED).permutation(n))
    images, labels = splits.pop("train")[order], splits.pop("train_labels")
    labels = None if labels is None else labels[order]
    cut = n - OMNIGLOT_VALIDATION
    splits.update(train=images[:cut], val=images[cut:])
    splits.update(
        train_labels=None if labels is None else labels[:cut],
        val_labels=None if labels is None else labels[cut:],
    )
    return splits
