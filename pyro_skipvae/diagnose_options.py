"""The options of :func:`pyro_skipvae.evaluation.diagnose_run` (``skipvae diagnose``): one
frozen dataclass, validated where it is made, so that Python and CLI users meet the same
errors."""

import dataclasses
import math
import os
from dataclasses import dataclass

import torch

from .errors import ConfigError
from .infer.precision import precision_mode

#: the splits a run can be diagnosed on
SPLITS = ("test", "val")
#: maps of the posterior means the diagnosis can draw
EMBEDDINGS = ("tsne", "pca")


@dataclass(frozen=True, kw_only=True)
class DiagnoseOptions:
    """Options of :func:`~pyro_skipvae.evaluation.diagnose_run` (``skipvae diagnose``'s flags, same names and
    defaults), checked once, here.

    :param str split: ``"test"`` (default) or ``"val"``.
    :param int num_samples: importance samples K of the IW-NLL (default 500; 0 skips it).
    :param int nll_size: score the IW-NLL on this many points of the split, drawn uniformly
        without replacement with ``seed`` (default: all; see
        :func:`~pyro_skipvae.diagnostics.diagnose`).
    :param int eval_size: evaluate the first ``eval_size`` examples of the split only.
    :param str dataset: evaluate on this data set (a name or file, same data shape) instead of
        the run's own, binarised as that data set is by default
        (:func:`~pyro_skipvae.data.default_binarization`, once, with the fixed seed): e.g. a
        model fitted on the unlabelled static binarised MNIST scored on labelled MNIST, a
        Bernoulli draw of the same intensities.
    :param data_dir: where the data sets are (default: see :mod:`pyro_skipvae.data.paths`).
    :param int num_refine_steps: refinement steps of q's local parameters (see
        :func:`~pyro_skipvae.evaluation.run_refinement`): default ``None`` evaluates a semi-amortized run with its own
        refinement and other runs amortized; 0 forces the amortized guide. The classifier's
        training codes are refined too.
    :param out: the JSON file to write (default ``<run_dir>/diagnostics.json``); the other
        outputs go beside it (:func:`~pyro_skipvae.evaluation.output_paths`).
    :param int classifier_train_size: fit the classifiers on the first this-many training
        images (default: all of the data set's training split).
    :param str accuracy_dataset: a labelled data set of the same shape on which to measure
        posterior-mean accuracy (``accuracy``, ``accuracy_knn``) when the evaluated one has
        no labels, e.g. ``"mnist"`` for a model of the unlabelled static binarised MNIST: its
        split and training images, binarised as that data set is by default (once, with the
        fixed seed), are encoded by the same (refined) guide.
    :param float au_threshold: δ of active units, Var_x E[z_d|x] > δ (default 0.01).
    :param str embedding: ``"tsne"`` (default) or ``"pca"``, the map of posterior means.
    :param bool plots: write the PNGs (default ``True``).
    :param bool keep_log_weights: store the N × K log-weights in the netCDF file.
    :param int seed: seed of the Monte-Carlo draws, the IW-NLL subset and the pictures.
    :param device: ``"cpu"`` (default), ``"cuda"`` or ``"cuda:N"``, where the model runs
        (see :class:`~pyro_skipvae.SkipVAE`).
    :param str precision: ``"32"`` or ``"bf16-mixed"``, how the networks run (see
        :mod:`pyro_skipvae.infer.precision`); default None: the run's own precision.
    :param bool progress: show progress bars.
    :raises ConfigError: an option out of range (a negative count, an unknown split or
        embedding).

    >>> DiagnoseOptions(split="val", num_samples=0).num_refine_steps is None
    True
    """

    split: str = "test"
    num_samples: int = 500
    nll_size: int | None = None
    eval_size: int | None = None
    dataset: str | None = None
    data_dir: str | os.PathLike | None = None
    num_refine_steps: int | None = None
    out: str | os.PathLike | None = None
    classifier_train_size: int | None = None
    accuracy_dataset: str | None = None
    au_threshold: float = 0.01
    embedding: str = "tsne"
    plots: bool = True
    keep_log_weights: bool = False
    seed: int = 0
    device: str | torch.device | None = None
    precision: str | None = None
    progress: bool = False

    def __post_init__(self):
        if self.precision is not None:
            object.__setattr__(self, "precision", precision_mode(self.precision))
        if self.split not in SPLITS:
            raise ConfigError(f"unknown split {self.split!r}; expected one of: {', '.join(SPLITS)}")
        for name in ("eval_size", "nll_size", "classifier_train_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be a positive integer, found {value}")
        if self.num_samples < 0 or (
            self.num_refine_steps is not None and self.num_refine_steps < 0
        ):
            raise ConfigError(
                f"num_samples and num_refine_steps must be >= 0, found {self.num_samples} and "
                f"{self.num_refine_steps}"
            )
        if not (math.isfinite(self.au_threshold) and self.au_threshold >= 0):
            raise ConfigError(f"au_threshold must be a number >= 0, found {self.au_threshold}")
        if self.embedding not in EMBEDDINGS:
            raise ConfigError(
                f"unknown embedding {self.embedding!r}; expected one of: {', '.join(EMBEDDINGS)}"
            )

    @classmethod
    def from_keywords(cls, options: "DiagnoseOptions | None" = None, **keywords):
        """``options`` itself, or the options named by ``keywords`` (the others at their
        defaults); not both.

        :raises TypeError: a keyword that is not an option (the message lists the valid
            ones), or both ``options`` and keywords.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(keywords) - set(names))
        if unknown:
            raise TypeError(
                f"unknown option(s) {', '.join(unknown)} of diagnose_run; expected some of: "
                f"{', '.join(names)}"
            )
        if options is None:
            return cls(**keywords)
        if keywords:
            raise TypeError(
                f"pass diagnose_run either options= or keywords, found both (options and "
                f"{', '.join(sorted(keywords))}); use dataclasses.replace(options, ...)"
            )
        if not isinstance(options, cls):
            raise TypeError(f"options must be a {cls.__name__}, found {type(options).__name__}")
        return options
