"""MNIST and Fashion-MNIST from the torchvision layout ``<data_dir>/<Name>/raw/*.gz``.

torchvision's dataset classes read *uncompressed* IDX files from ``raw/`` and would
decompress (write) into the data folder, which may be read-only. So the ``.gz`` files are
decompressed once into the cache folder, their *content* checked against the published md5s
(Debian's re-compressed Fashion-MNIST files have other ``.gz`` md5s than torchvision's list,
but the same content), and torchvision reads them from there. :func:`download` fetches them
with torchvision's own downloader and md5 check.
"""

import gzip
import hashlib
import zlib
from pathlib import Path

import torch
import torchvision

from ..checkpoint import atomic_write_bytes
from ..errors import DataError
from .paths import cache_dir, user_data_dir

# md5 of the *uncompressed* IDX files (torchvision's and the datasets' published tables;
# also recorded in shared/data/SOURCES.md).
_MD5 = {
    "MNIST": {
        "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
    },
    "FashionMNIST": {
        "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
    },
}
_CLASSES = {"MNIST": torchvision.datasets.MNIST, "FashionMNIST": torchvision.datasets.FashionMNIST}


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _prepare_raw(name: str, data_dir: Path) -> Path:
    """Decompress and verify ``name``'s four files into the cache; return the cache root."""
    source = data_dir / name / "raw"
    root = cache_dir() / "torchvision"
    target = root / name / "raw"
    for stem, md5 in _MD5[name].items():
        out = target / stem
        if out.is_file() and _md5(out) == md5:
            continue
        gz = source / f"{stem}.gz"
        if not gz.is_file():
            raise DataError(
                f"{name}: expected {gz} (torchvision layout <data-dir>/{name}/raw/{stem}.gz), "
                "but it does not exist"
            )
        try:
            content = gzip.decompress(gz.read_bytes())
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{name}: {gz} is not a valid gzip file ({e})") from None
        found = hashlib.md5(content).hexdigest()
        if found != md5:
            raise DataError(f"{name}: {gz} is corrupt: expected content md5 {md5}, found {found}")
        atomic_write_bytes(out, content)
    return root


def download(name: str, root: Path | None = None) -> Path:
    """Fetch ``name``'s four files with torchvision's downloader (it checks their md5s) into
    ``root`` (default: the user data folder); return that folder.

    :raises DataError: when the download fails (e.g. offline), naming the files and where
        to put them by hand.
    """
    root = Path(root) if root is not None else user_data_dir()
    try:
        _CLASSES[name](root, train=True, download=True)
        _CLASSES[name](root, train=False, download=True)
    except Exception as e:  # urllib, http and md5 failures all end here
        files = ", ".join(f"{stem}.gz" for stem in _MD5[name])
        raise DataError(
            f"{name}: download failed ({type(e).__name__}: {e}); put {files} into "
            f"{root / name / 'raw'} (or any folder's {name}/raw/, passed as --data-dir)"
        ) from None
    return root


def load_images(name: str, data_dir: Path, *, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as floats in [0, 1] of shape ``(N, 1, 28, 28)`` and integer labels ``(N,)``."""
    root = _prepare_raw(name, data_dir)
    dataset = _CLASSES[name](root, train=train, download=False)
    return dataset.data.unsqueeze(1).float().div_(255.0), dataset.targets.long()
