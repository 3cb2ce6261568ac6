"""Users' own data from ``.pt`` or ``.npy`` files."""

from pathlib import Path

import numpy as np
import torch

from ..errors import DataError


def load_tensor_file(path) -> dict[str, torch.Tensor]:
    """Read a data file into a dict with ``"train"`` and optionally ``"val"``/``"test"``
    (and ``"<split>_labels"``).

    * ``.npy``: one array of shape ``(N, ...)``;
    * ``.pt``: a tensor of shape ``(N, ...)``, or a dict of such tensors keyed as above.

    :raises DataError: if the file is missing, unreadable or holds something else.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    try:
        if path.suffix == ".npy":
            content = torch.from_numpy(np.load(path, allow_pickle=False))
        elif path.suffix == ".pt":
            content = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise DataError(f"{path}: expected a .pt or .npy file, found suffix {path.suffix!r}")
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path} could not be read ({type(e).__name__}: {e})") from None
    splits = {"train": content} if isinstance(content, torch.Tensor) else content
    if not isinstance(splits, dict) or not isinstance(splits.get("train"), torch.Tensor):
        raise DataError(
            f"{path}: expected a tensor or a dict with a 'train' tensor, found {type(content).__name__}"
            + (f" with keys {sorted(content)}" if isinstance(content, dict) else "")
        )
    for key, value in splits.items():
        if not isinstance(value, torch.Tensor) or value.dim() < 1:
            raise DataError(f"{path}: entry {key!r} must be a tensor of shape (N, ...)")
    return splits
