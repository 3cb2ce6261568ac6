r"""Compiled networks: :func:`torch.compile` of the encoder and decoder inside the unchanged
Pyro model and guide.

**What is compiled, and why only that.** A training step is Pyro's bookkeeping (the trace of
model and guide, the ``log_prob`` sums of the ELBO) wrapped around two networks, the encoder
x → (μ, log σ²) and the decoder z (and x) → likelihood parameters. The networks hold almost
every kernel of the step; the bookkeeping holds the Python. So the networks alone are compiled
(:meth:`torch.nn.Module.compile`, in place) and Pyro's trace stays dynamic: every
prior, likelihood, guide family, ELBO and handler keeps working, and what the compiler sees is
a pure tensor function with no Pyro inside it. Compilation is lazy: the first call of each
network with a new input shape, training flag or ``requires_grad`` pattern compiles (seconds to
tens of seconds on a CPU), later calls reuse the code.

Compiling changes the floating-point evaluation order (fused kernels, reordered reductions),
not the maths: losses agree with the eager networks to a few float32 ulps per term, so a
compiled fit and an eager one on the same seed give the same losses within float tolerance.
State-dict keys do not change either (:meth:`~torch.nn.Module.compile` compiles the call, it
does not wrap the module, so there is no ``_orig_mod.`` prefix): checkpoints move freely
between compiled and eager models.

**Modes** (``compile=``; ``True`` means ``"default"``):

``"default"``
    Inductor kernels, fewer and fused launches; works on CPU and CUDA.
``"reduce-overhead"``
    ``"default"`` plus CUDA graphs (CUDA only): each network's kernels are recorded once per
    input shape and replayed with one launch, removing the per-kernel launch cost that
    dominates small steps on a GPU (batch 50 does little arithmetic per kernel). On a CPU it
    falls back to ``"default"`` with a logged warning, so a configuration written on a GPU
    still runs elsewhere.
``"max-autotune"``
    Like ``"reduce-overhead"`` but also benchmarks kernel variants while compiling (minutes);
    on a CPU it falls back to ``"max-autotune-no-cudagraphs"``.
``"max-autotune-no-cudagraphs"``
    The autotuning without CUDA graphs.

The outputs of a CUDA-graph network live in memory that the next replay overwrites; the
next replay can come before the previous outputs are used (the guide's (μ, σ) are read by
the ELBO after the decoder has run, and without gradients every call starts a new
"iteration" of :mod:`torch.compiler`'s CUDA-graph trees). The outputs are therefore cloned as
they leave the network, as PyTorch's documentation advises: one copy of (μ, log σ²) and of the
likelihood parameters per call, small against the network.

**Shapes.** ``dynamic=None`` (PyTorch's automatic dynamic shapes): the first call compiles for
its exact shapes; when a dimension changes (the smaller last minibatch, the validation batch
size, the trimmed length of a text minibatch) the network is compiled once more with that
dimension symbolic, and that code serves every later size. So variable text lengths cost one
extra compilation, not one per length, in ``"default"`` mode. CUDA graphs cannot be symbolic:
one graph is recorded per distinct shape, so for text minibatches (one length per bucket)
``"reduce-overhead"`` and ``"max-autotune"`` are refused (:func:`check_training`).

**What cannot be compiled** (refused by :func:`check_training` with a
:class:`~pyro_skipvae.errors.ConfigError` before any step):

* End-to-end semi-amortized training. Its loss −ELBO(λ_K) with
  λ_{k+1} = λ_k − η ∇_λ(−ELBO(λ_k)) is differentiated through the refinement's gradients,
  i.e. twice through the decoder (Hessian-vector products, ``create_graph=True``);
  AOTAutograd's compiled backward is once-differentiable, so torch refuses that double
  backward at the first step. The other semi-amortized modes (``stop-gradient``, ``kl``,
  ``svi``) take first-order gradients only and compile.
* CUDA graphs with semi-amortized training: the K refinement passes before the one backward
  would record K + 1 graphs per network for each minibatch shape; use ``"default"``.
* Pyro's JIT ELBOs (``elbo="jit"``): :func:`torch.jit.trace` of the whole model cannot
  trace through a :func:`torch.compile`\ d call. Compile the networks *or* JIT-trace the model.

Dropout (the LSTM decoder's ``dropout``, ``word_dropout``) inside a compiled network draws its
random numbers from Inductor's own generator (seeded from torch's), so a compiled and an
eager fit with dropout agree in distribution, not draw by draw.
"""

import logging

import torch
from torch.utils._pytree import tree_map

from ..errors import ConfigError

logger = logging.getLogger(__name__)

#: the accepted ``compile=`` mode names (``True`` means ``"default"``, ``False`` no compile)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: the modes that record CUDA graphs, and the mode each falls back to off CUDA
CUDA_GRAPH_MODES = {
    "reduce-overhead": "default",
    "max-autotune": "max-autotune-no-cudagraphs",
}


def compile_mode(value) -> str | bool:
    """Normalise a ``compile=`` value: ``False``/``None`` → ``False`` (no compile), ``True`` →
    ``"default"``, a name in :data:`COMPILE_MODES` → itself.

    :raises ConfigError: for anything else, listing the valid values.
    """
    if value is None or value is False:
        return False
    if value is True:
        return "default"
    if isinstance(value, str) and value in COMPILE_MODES:
        return value
    raise ConfigError(
        f"unknown compile mode {value!r}; expected True, False or one of: "
        + ", ".join(COMPILE_MODES)
    )


def effective_mode(mode, device) -> str | bool:
    """The mode that runs on ``device``: a CUDA-graph mode off CUDA becomes its fallback
    (:data:`CUDA_GRAPH_MODES`), with a logged warning."""
    mode = compile_mode(mode)
    if mode in CUDA_GRAPH_MODES and torch.device(device).type != "cuda":
        fallback = CUDA_GRAPH_MODES[mode]
        logger.warning(
            "compile mode %r records CUDA graphs, which need a CUDA device; on %s the networks "
            "are compiled with mode %r instead",
            mode,
            torch.device(device),
            fallback,
        )
        return fallback
    return mode


def compile_networks(modules, mode, device) -> str | bool:
    """Compile each module's call in place with :func:`torch.compile` (``dynamic=None``) and
    return the mode used (:func:`effective_mode`), or ``False`` for no compile.

    In place means the module stays the same object with the same parameters and state-dict
    keys; only ``module(...)`` runs compiled code (other methods, e.g. a decoder's ``sample``
    loop, run eagerly around the compiled call). In CUDA-graph modes every output is cloned
    as it leaves the network (see the module docstring).

    :param modules: the networks, e.g. ``(decoder, encoder)``.
    :param mode: a ``compile=`` value (see :func:`compile_mode`).
    :param device: where the networks run.
    """
    mode = effective_mode(mode, device)
    if not mode:
        return False
    for module in modules:
        module.compile(mode=mode, dynamic=None)
        if mode in CUDA_GRAPH_MODES:
            module._compiled_call_impl = _cloning(module._compiled_call_impl)
    return mode


def _cloning(call):
    """``call`` with every tensor it returns cloned: a CUDA-graph replay writes its outputs
    into the same memory each time, and a clone keeps the value this call produced."""

    def cloned(*args, **kwargs):
        return tree_map(
            lambda t: t.clone() if isinstance(t, torch.Tensor) else t, call(*args, **kwargs)
        )

    return cloned


def check_training(mode, inference, *, sequences=False) -> None:
    """Refuse, before the first step, a training setup that compiled networks cannot run.

    :param mode: the mode the networks were compiled with (:func:`effective_mode`), or False.
    :param inference: the inference object (anything with ``step``; its ``mode`` and ``loss``
        attributes are read when present).
    :param bool sequences: whether the minibatches have variable lengths (text).
    :raises ConfigError: end-to-end semi-amortized training (double backward); a JIT ELBO;
        CUDA graphs with semi-amortized training or with variable-length minibatches.
    """
    if not mode:
        return
    semi_amortized = hasattr(inference, "refinement")
    if semi_amortized and getattr(inference, "mode", None) == "end-to-end":
        raise ConfigError(
            "compiled networks cannot train end-to-end semi-amortized: its gradient goes twice "
            "through the decoder (double backward through the refinement), which torch.compile "
            "does not support; use inference_options mode='stop-gradient', 'kl' or 'svi' "
            "(--sa-mode), or compile=False"
        )
    loss = getattr(inference, "loss", None)
    loss = getattr(loss, "__self__", loss)  # pyro.infer.SVI keeps the ELBO's bound .loss
    if type(loss).__name__.startswith("Jit"):
        raise ConfigError(
            f"compiled networks cannot run under a JIT-traced ELBO ({type(loss).__name__}); "
            "use elbo='trace' (or another non-JIT ELBO) with compile, or compile=False"
        )
    if mode in CUDA_GRAPH_MODES and (semi_amortized or sequences):
        reason = (
            "semi-amortized refinement runs the networks K + 1 times before one backward"
            if semi_amortized
            else "text minibatches change length from batch to batch"
        )
        raise ConfigError(
            f"compile mode {mode!r} records one CUDA graph per network call and shape, and "
            f"{reason}; use compile='default' (or True)"
        )


__all__ = [
    "COMPILE_MODES",
    "CUDA_GRAPH_MODES",
    "check_training",
    "compile_mode",
    "compile_networks",
    "effective_mode",
]
