r"""Mixed precision: the encoder and decoder networks under :func:`torch.autocast` (bfloat16),
everything probabilistic in float32.

**What runs in bfloat16, and why only that.** Most of a training step is the networks' matrix
products: on text, the output layer's product of every position's hidden state with the
10,002-word embedding table (forward and backward) is most of the step. Under
``precision="bf16-mixed"`` each network's call runs inside
``torch.autocast(device_type, dtype=torch.bfloat16)``, so its matrix products, convolutions
and (on CPUs with oneDNN) LSTM layers take bfloat16 inputs and accumulate in float32, and the
tensors it returns are cast back to float32 as they leave it. So what the networks produce
(the likelihood's logits, the guide's μ and log σ²) enters Pyro in float32, and everything
built from it stays there:

* log p(x | z) (the softmax over the vocabulary, the Bernoulli and logistic densities),
  log p(z), log q(z | x) and the analytic KL, the ELBO and every diagnostic estimator;
* the semi-amortized refinement's local parameters λ = (μ, log σ²) and their updates;
* the weights themselves, their gradients (autocast casts a float32 weight to bfloat16
  inside the product; the gradient flows back to the float32 weight), the gradient clip and
  the optimizer's state. Checkpoints are therefore the same float32 tensors in either
  precision and move freely between them.

The prior is not autocast: its output is a distribution whose density *is* a KL term (a
flow prior's log-determinant, a mixture's log-sum-exp), so it stays in float32; a VampPrior's
network is the encoder, which is.

This is PyTorch Lightning's ``precision="bf16-mixed"``. bfloat16 keeps float32's exponent
range, so there is no loss scaling (unlike float16) and no overflow to guard against; what it
costs is resolution: 8 significant bits, so a logit near 10 is rounded by up to about 0.03.
Those roundings are independent across positions and largely cancel in a sentence's sum;
``benchmarks/precision.py`` measures the selected validation bound of float32 and
bf16-mixed fits side by side (``benchmarks/results/precision.md``).

**Where it runs.** On CUDA devices that support bfloat16 (compute capability 8.0, Ampere, and newer), and on every CPU: natively (fast) where the CPU has
AVX-512 BF16 or AMX, emulated (correct, but usually slower than float32) elsewhere, with a
logged warning. A CUDA device without bfloat16 is refused with a
:class:`~pyro_skipvae.errors.ConfigError` rather than silently run in float32.

>>> vae = SkipVAE((784,), precision="bf16-mixed")  # doctest: +SKIP
"""

import functools
import logging
from pathlib import Path

import torch
from torch.utils._pytree import tree_map

from ..errors import ConfigError

logger = logging.getLogger(__name__)

#: the accepted ``precision=`` values (Lightning's names): float32, and bfloat16 mixed precision
PRECISIONS = ("32", "bf16-mixed")
#: other spellings users reach for, and the name each means
_ALIASES = {"32-true": "32", "fp32": "32", "float32": "32", "bf16": "bf16-mixed"}


def precision_mode(value) -> str:
    """Normalise a ``precision=`` value: ``32``, ``"32"`` (also ``"32-true"``, ``"fp32"``,
    ``"float32"``) → ``"32"``; ``"bf16-mixed"`` (also ``"bf16"``) → ``"bf16-mixed"``.

    :raises ConfigError: for anything else, listing the valid values.
    """
    name = str(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else None
    name = _ALIASES.get(name, name)
    if name in PRECISIONS:
        return name
    raise ConfigError(f"unknown precision {value!r}; expected one of: {', '.join(PRECISIONS)}")


def check_device(precision: str, device) -> None:
    """Refuse a precision that ``device`` cannot run; warn where it runs slowly.

    :raises ConfigError: bf16-mixed on a CUDA device without bfloat16 support, or on a
        device type other than CPU and CUDA.
    """
    if precision_mode(precision) == "32":
        return
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        # this device's capability (is_bf16_supported() asks about the current device only)
        if torch.cuda.get_device_capability(index) < (8, 0):
            name = torch.cuda.get_device_name(index)
            raise ConfigError(
                f"precision 'bf16-mixed' needs a GPU with bfloat16 support (compute capability "
                f"8.0 or newer); found {name} on {device}; use precision '32'"
            )
    elif device.type == "cpu":
        if not native_cpu_bf16():
            logger.warning(
                "precision 'bf16-mixed' on a CPU without native bfloat16 instructions "
                "(AVX-512 BF16 or AMX): results are correct but usually slower than '32'"
            )
    else:
        raise ConfigError(
            f"precision 'bf16-mixed' runs on CPU and CUDA devices; found {device.type!r}"
        )


@functools.cache
def native_cpu_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (the ``avx512_bf16`` or ``amx_bf16``
    flag of ``/proc/cpuinfo``; ARM's ``bf16`` feature). False where it cannot be told."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def autocast_networks(modules, precision: str, device) -> str:
    """Run each module's call under bfloat16 autocast on ``device`` (in place), its floating
    outputs cast back to float32; return the normalised precision. ``"32"`` changes nothing.

    In place means the module keeps its class, parameters and state-dict keys: only
    ``module(...)`` changes (as :meth:`torch.nn.Module.compile` does; the two combine,
    the compiler tracing through the autocast region). Methods other than the call (a
    decoder's ``sample`` loop) reach the network through its call, so they run mixed too.

    :raises ConfigError: see :func:`check_device`.
    """
    precision = precision_mode(precision)
    if precision == "32":
        return precision
    check_device(precision, device)
    device_type = torch.device(device).type
    for module in modules:
        module.forward = _autocast(module.forward, device_type)
    return precision


def _autocast(forward, device_type):
    """``forward`` inside bfloat16 autocast, every bfloat16 tensor it returns as float32."""

    @functools.wraps(forward)
    def mixed(*args, **kwargs):
        with torch.autocast(device_type, dtype=torch.bfloat16):
            out = forward(*args, **kwargs)
        return tree_map(_to_float32, out)

    return mixed


def _to_float32(value):
    if isinstance(value, torch.Tensor) and value.dtype == torch.bfloat16:
        return value.float()
    return value


__all__ = ["PRECISIONS", "autocast_networks", "check_device", "native_cpu_bf16", "precision_mode"]
