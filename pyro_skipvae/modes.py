"""Train and evaluation mode of the networks (dropout, batch normalisation)."""

from contextlib import contextmanager

from torch import nn


@contextmanager
def evaluating(*modules):
    """Put every :class:`torch.nn.Module` among ``modules`` in ``eval()`` mode for the block,
    then restore each submodule's own mode.

    Evaluation (validation scores, refinement at evaluation, diagnostics, encoding,
    sampling) must not drop units at random nor update batch-normalisation statistics;
    objects that are not modules (e.g. plain-function guides) are ignored.
    """
    saved = [
        (m, m.training)
        for module in modules
        if isinstance(module, nn.Module)
        for m in module.modules()
    ]
    for module in modules:
        if isinstance(module, nn.Module):
            module.eval()
    try:
        yield
    finally:
        for m, training in saved:
            m.training = training
