"""The front door: :class:`SkipVAE` builds, fits, evaluates, samples, saves and loads.

>>> from pyro_skipvae import SkipVAE
>>> from pyro_skipvae.data import load_dataset
>>> splits = load_dataset("mnist", train_size=5000)                     # doctest: +SKIP
>>> vae = SkipVAE(splits.data_shape, latent_dim=32, skip=True, seed=0)   # doctest: +SKIP
>>> history = vae.fit(splits.train, val=splits.val, num_epochs=2,
...                   binarize="dynamic", run_dir="runs/demo")           # doctest: +SKIP
>>> history[-1]["val_elbo"]                                              # doctest: +SKIP
"""

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyro
import pyro.optim
import torch

from . import checkpoint
from .data import BINARIZATIONS, binarize_for_evaluation
from .data import binarize as binarize_data
from .diagnostics import diagnose, evaluate_elbo
from .errors import CheckpointError, ConfigError, DataError
from .guides import ENCODERS, Guide
from .infer import ELBOS, INFERENCES, LinearWarmup, train
from .models import DECODERS, LIKELIHOODS, PRIORS, Model

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
CONFIG_FILE, CHECKPOINT_FILE, BEST_FILE, METRICS_FILE = (
    "config.json",
    "checkpoint.pt",
    "best.pt",
    "metrics.jsonl",
)
# Options that may change between a run and its resumption without changing the result
# of the epochs already done.
RESUMABLE_CHANGES = {("train", "num_epochs"), ("run", "device")}


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model and guide (``config.json``'s ``"model"``)."""

    data_shape: tuple[int, ...]
    latent_dim: int = 32
    hidden_dims: tuple[int, ...] = (1024, 1024)
    skip: bool = True
    decoder: str = "mlp"
    encoder: str = "mlp"
    prior: str = "normal"
    likelihood: str = "bernoulli"
    prior_options: dict = field(default_factory=dict)
    likelihood_options: dict = field(default_factory=dict)

    def __post_init__(self):
        self.data_shape = tuple(int(d) for d in self.data_shape)
        self.hidden_dims = tuple(int(h) for h in self.hidden_dims)
        _check_positive(latent_dim=self.latent_dim)
        if not self.data_shape or min(self.data_shape) < 1:
            raise ConfigError(f"data_shape must be non-empty and positive, found {self.data_shape}")
        if not self.hidden_dims or min(self.hidden_dims) < 1:
            raise ConfigError(
                f"hidden_dims must be one or more positive widths, found {self.hidden_dims}"
            )


def _check_positive(**values):
    for name, value in values.items():
        if value is None or value <= 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise ConfigError(f"{name} must be positive, found {value}")


def _name(component) -> str:
    """The registry name of a component, or a marker for a user-supplied object."""
    return component if isinstance(component, str) else f"custom:{type(component).__name__}"


def _plain(obj):
    """JSON round trip: tuples become lists, so configs compare equal after a reload."""
    return json.loads(json.dumps(obj))


class SkipVAE:
    r"""A VAE whose decoder may feed z into every layer (Dieng et al. 2019).

    Generative model p(z) p(x | z) with ``h_l = f(W_l h_{l-1} + U_l z)`` in the decoder
    (``skip=True``) or the standard VAE (``skip=False``); amortized guide
    q(z|x) = N(μ(x), diag σ²(x)).

    :param tuple data_shape: shape of one datapoint, e.g. ``(1, 28, 28)``.
    :param int latent_dim: size of z (default 32).
    :param tuple hidden_dims: hidden widths of encoder and decoder (default ``(1024, 1024)``).
    :param bool skip: generative skip connections (default True).
    :param decoder: registry name in :data:`~pyro_skipvae.models.DECODERS` (default ``"mlp"``)
        or a :class:`~pyro_skipvae.models.Decoder` instance.
    :param encoder: registry name in :data:`~pyro_skipvae.guides.ENCODERS` or an instance.
    :param prior: name in :data:`~pyro_skipvae.models.PRIORS` (``"normal"``,
        ``"learned-normal"``, ``"mixture"``) or a :class:`~pyro_skipvae.models.Prior`.
    :param likelihood: name in :data:`~pyro_skipvae.models.LIKELIHOODS` (``"bernoulli"``,
        ``"continuous-bernoulli"``, ``"normal"``, ``"categorical"``) or an instance.
    :param dict prior_options: keyword arguments for a named prior (e.g. ``num_components``).
    :param dict likelihood_options: keyword arguments for a named likelihood
        (e.g. ``num_categories``).
    :param str device: ``"cpu"`` (default) or ``"cuda"``.
    :param int seed: if given, seeds Pyro's RNGs before the weights are initialised.
    """

    def __init__(
        self,
        data_shape,
        *,
        latent_dim=32,
        hidden_dims=(1024, 1024),
        skip=True,
        decoder="mlp",
        encoder="mlp",
        prior="normal",
        likelihood="bernoulli",
        prior_options=None,
        likelihood_options=None,
        device=None,
        seed=None,
    ):
        self.config = ModelConfig(
            data_shape,
            latent_dim,
            hidden_dims,
            skip,
            _name(decoder),
            _name(encoder),
            _name(prior),
            _name(likelihood),
            dict(prior_options or {}),
            dict(likelihood_options or {}),
        )
        if seed is not None:
            pyro.set_rng_seed(seed)
        c = self.config
        likelihood = LIKELIHOODS.build(likelihood, c.data_shape, **c.likelihood_options)
        decoder = DECODERS.build(
            decoder, c.latent_dim, likelihood.param_shape, hidden_dims=c.hidden_dims, skip=c.skip
        )
        prior = PRIORS.build(prior, c.latent_dim, **c.prior_options)
        encoder = ENCODERS.build(encoder, c.data_shape, c.latent_dim, hidden_dims=c.hidden_dims)
        self.device = torch.device(device or "cpu")
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was requested but torch finds no CUDA device here")
        self.model = Model(prior, decoder, likelihood).to(self.device)
        self.guide = Guide(encoder).to(self.device)
        self.history: list[dict] = []

    @classmethod
    def from_config(cls, config: dict | ModelConfig, **overrides) -> "SkipVAE":
        """Rebuild from a :class:`ModelConfig` (or its dict); custom components must be
        passed again in ``overrides`` (e.g. ``prior=MyPrior(...)``)."""
        options = asdict(config) if isinstance(config, ModelConfig) else dict(config)
        options.update(overrides)
        for key in ("decoder", "encoder", "prior", "likelihood"):
            if isinstance(options[key], str) and options[key].startswith("custom:"):
                raise ConfigError(
                    f"this model used a custom {key} ({options[key][7:]}); pass it again as {key}=..."
                )
        data_shape = options.pop("data_shape")
        return cls(data_shape, **options)

    # ------------------------------------------------------------------ training
    def fit(
        self,
        train_data,
        *,
        val=None,
        num_epochs=10,
        batch_size=50,
        learning_rate=1e-3,
        clip_norm=None,
        kl_warmup_epochs=10.0,
        kl_start=0.1,
        elbo="trace",
        inference="svi",
        inference_options=None,
        binarize="none",
        seed=0,
        eval_batch_size=500,
        run_dir=None,
        resume=False,
        run_info=None,
        progress=False,
    ) -> list[dict]:
        """Fit by stochastic variational inference; return one metrics record per epoch.

        :param torch.Tensor train_data: training data, shape ``(N, *data_shape)``; with
            ``binarize`` set, intensities in [0, 1].
        :param torch.Tensor val: validation data scored after every epoch (``val_elbo``,
            ``val_kl``; with ``run_dir``, the best-scoring epoch is kept as ``best.pt``).
        :param int num_epochs: total epochs (default 10); on resume, the run continues to it.
        :param int batch_size: minibatch size (default 50, as in the authors' image code).
        :param float learning_rate: step size of :class:`pyro.optim.ClippedAdam` (1e-3).
        :param float clip_norm: ClippedAdam's clip: every gradient *element* is clamped to
            [−clip_norm, clip_norm] (default None: no clipping). The loss is the minibatch sum
            scaled by N / batch size, so gradients grow with the data-set size; Pyro's default
            of 10 clamps nearly every element on MNIST and slowed learning (validation ELBO
            −143.9 against −130.2 nats after 3 epochs on 10,000 images).
        :param float kl_warmup_epochs: β rises linearly from ``kl_start`` to 1 over this many
            epochs (default 10 from 0.1, as in the papers' scripts; 0 disables warm-up).
        :param elbo: ``"trace"`` (:class:`~pyro.infer.Trace_ELBO`, default), ``"mean-field"``
            (:class:`~pyro.infer.TraceMeanField_ELBO`) or any Pyro ELBO instance.
        :param inference: ``"svi"`` (default), another name in
            :data:`~pyro_skipvae.infer.INFERENCES`, or a ready object with ``step``.
        :param dict inference_options: keyword arguments for a named inference algorithm.
        :param str binarize: ``"dynamic"`` (resampled every epoch), ``"threshold"`` or
            ``"none"`` (default); validation data are binarised once, with a fixed seed.
        :param int seed: seeds the data order, binarisation and Monte-Carlo draws.
        :param run_dir: if given, writes ``config.json``, ``checkpoint.pt`` (every epoch),
            ``best.pt`` and ``metrics.jsonl`` there, all atomically.
        :param bool resume: continue the run in ``run_dir`` from its last checkpoint; the
            result is identical to an uninterrupted run.
        :param dict run_info: extra JSON-able facts stored in ``config.json`` under ``"run"``
            and checked on resume (e.g. the data set name).
        :param bool progress: show a progress bar.
        :raises ConfigError: bad options, or ``resume`` against a different configuration.
        :raises DataError: data of the wrong shape, non-finite, or outside the likelihood's support.
        :raises NonFiniteLossError: a NaN/inf loss; the last checkpoint stays intact.
        """
        _check_positive(
            num_epochs=num_epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
            eval_batch_size=eval_batch_size,
        )
        if clip_norm is not None:
            _check_positive(clip_norm=clip_norm)
        if kl_warmup_epochs < 0 or not 0 < kl_start <= 1:
            raise ConfigError(
                f"expected kl_warmup_epochs >= 0 and 0 < kl_start <= 1, found {kl_warmup_epochs} and {kl_start}"
            )
        train_data = self._prepare_data(train_data, binarize, "training data", for_training=True)
        if val is not None:
            val = self._prepare_data(val, binarize, "validation data").to(self.device)
        config = _plain(
            {
                "format": CHECKPOINT_FORMAT,
                "model": asdict(self.config),
                "train": {
                    "num_epochs": num_epochs,
                    "batch_size": batch_size,
                    "learning_rate": learning_rate,
                    "clip_norm": clip_norm,
                    "kl_warmup_epochs": kl_warmup_epochs,
                    "kl_start": kl_start,
                    "elbo": _name(elbo),
                    "inference": _name(inference),
                    "inference_options": inference_options or {},
                    "binarize": binarize,
                    "seed": seed,
                    "eval_batch_size": eval_batch_size,
                },
                "run": {**(run_info or {}), "device": str(self.device)},
            }
        )
        run_dir = None if run_dir is None else Path(run_dir)
        state = self._start_run(run_dir, config, resume) if run_dir is not None else None

        pyro.set_rng_seed(seed)
        generator = torch.Generator().manual_seed(seed)
        optim = pyro.optim.ClippedAdam(
            {"lr": learning_rate, "clip_norm": math.inf if clip_norm is None else clip_norm}
        )
        loss = ELBOS.build(elbo)
        if isinstance(inference, str):
            inference = INFERENCES.build(
                inference, self.model, self.guide, optim, loss, **(inference_options or {})
            )
        optim = getattr(inference, "optim", optim)
        history, best = [], -math.inf
        if state is not None:
            self._load_states(state)
            optim.set_state(state["optimizer"])
            checkpoint.set_rng_state(state["rng"])
            generator.set_state(state["generator"])
            history, best = list(state["history"]), state["best_val_elbo"]
            logger.info("resuming %s after epoch %d", run_dir, state["epoch"])

        def evaluate():
            if val is None:
                return {}
            metrics = evaluate_elbo(self.model, self.guide, val, batch_size=eval_batch_size)
            record = {"val_elbo": metrics["elbo"], "val_kl": metrics["kl"]}
            if hasattr(inference, "evaluate_metrics"):
                extra = inference.evaluate_metrics(val, batch_size=eval_batch_size)
                record.update({f"val_{k}": v for k, v in extra.items()})
            return record

        def on_epoch_end(record):
            nonlocal best
            history.append(record)
            if run_dir is None:
                return
            weights = self._state_dict(config, record["epoch"])
            score = record.get("val_elbo", record["train_elbo"])
            if score > best:
                best = score
                checkpoint.atomic_save(weights, run_dir / BEST_FILE)
            state = dict(
                weights,
                optimizer=optim.get_state(),
                rng=checkpoint.get_rng_state(),
                generator=generator.get_state(),
                history=history,
                best_val_elbo=best,
            )
            checkpoint.atomic_save(state, run_dir / CHECKPOINT_FILE)
            _write_metrics(run_dir, history)

        # A fresh parameter-store scope: parameter names of another model in this process
        # must not shadow ours (SVI optimises what the param store hands back).
        with pyro.get_param_store().scope():
            if run_dir is not None:
                _write_metrics(run_dir, history)
            train(
                inference,
                train_data,
                num_epochs=num_epochs,
                batch_size=batch_size,
                generator=generator,
                start_epoch=len(history),
                annealing=LinearWarmup(kl_warmup_epochs, kl_start),
                transform=None
                if binarize != "dynamic"
                else (lambda x, g: binarize_data(x, "dynamic", g)),
                evaluate=evaluate,
                on_epoch_end=on_epoch_end,
                device=self.device,
                progress=progress,
            )
        self.history = history
        return history

    def _prepare_data(self, x, mode, name, for_training=False):
        """Check ``x`` and return what the likelihood will see (binarised unless dynamic)."""
        if not isinstance(x, torch.Tensor):
            raise DataError(f"{name}: expected a torch.Tensor, found {type(x).__name__}")
        if mode not in BINARIZATIONS:
            raise ConfigError(
                f"unknown binarize {mode!r}; expected one of: {', '.join(BINARIZATIONS)}"
            )
        if mode == "none":
            self.model.likelihood.validate(x, name)
            return x
        x = x.float()
        if not torch.isfinite(x).all():
            raise DataError(
                f"{name}: expected finite values, found {int((~torch.isfinite(x)).sum())} NaN/inf entries"
            )
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise DataError(
                f"{name}: binarize={mode!r} expects intensities in [0, 1], found range "
                f"[{x.min().item():.3g}, {x.max().item():.3g}]"
            )
        self.model.likelihood.validate(binarize_data(x, "threshold"), name)
        if for_training and mode == "dynamic":
            return x  # binarised afresh every epoch
        return binarize_for_evaluation(x, mode)

    # ------------------------------------------------------------------ run directories
    def _start_run(self, run_dir: Path, config: dict, resume: bool):
        """Write or check ``config.json``; return the checkpoint to resume from, if any."""
        config_path, checkpoint_path = run_dir / CONFIG_FILE, run_dir / CHECKPOINT_FILE
        if config_path.exists() or checkpoint_path.exists():
            if not resume:
                raise ConfigError(
                    f"{run_dir} already holds a run; pass resume=True (--resume) to continue it, "
                    "or choose another output directory (nothing was overwritten)"
                )
            try:
                saved = json.loads(config_path.read_text())
            except (OSError, ValueError) as e:
                raise CheckpointError(f"{config_path} is missing or unreadable ({e})") from None
            differences = _config_differences(saved, config)
            if differences:
                raise ConfigError(
                    f"cannot resume {run_dir}: its configuration differs in "
                    + "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, a, b in differences)
                )
        checkpoint.atomic_write_json(config_path, config)
        if not (resume and checkpoint_path.exists()):
            return None
        state = checkpoint.load(checkpoint_path)
        if _config_differences(state["config"], config):
            raise CheckpointError(
                f"{checkpoint_path} was written for a different configuration than {config_path}"
            )
        return state

    def _state_dict(self, config, epoch):
        return {
            "format": CHECKPOINT_FORMAT,
            "config": config,
            "epoch": epoch,
            "model": self.model.state_dict(),
            "guide": self.guide.state_dict(),
        }

    def _load_states(self, state):
        try:
            self.model.load_state_dict(state["model"])
            self.guide.load_state_dict(state["guide"])
        except (RuntimeError, KeyError) as e:
            raise CheckpointError(f"checkpoint does not fit this model ({e})") from None

    # ------------------------------------------------------------------ using a fit
    def evaluate(self, data, *, batch_size=500, num_particles=1) -> dict:
        """Mean per-datapoint ``elbo`` and ``kl`` (nats) over ``data`` (already in the
        likelihood's support). See :func:`~pyro_skipvae.diagnostics.evaluate_elbo`."""
        self.model.likelihood.validate(data)
        result = evaluate_elbo(
            self.model,
            self.guide,
            data.to(self.device),
            batch_size=batch_size,
            num_particles=num_particles,
        )
        return {"elbo": result["elbo"], "kl": result["kl"]}

    def diagnose(self, data, **options) -> dict:
        """Collapse diagnostics of this model on ``data`` (already in the likelihood's support):
        ELBO, KL, full-set MI, aggregate KL, active units, IW-NLL with Pareto k̂ and, given
        labels, posterior-mean accuracy. Options and result: :func:`pyro_skipvae.diagnostics.diagnose`."""
        self.model.likelihood.validate(data)
        return diagnose(self.model, self.guide, data.to(self.device), **options)

    @torch.no_grad()
    def encode(self, x):
        """Posterior means and standard deviations ``(loc, scale)`` of q(z | x)."""
        loc, log_scale = self.guide.local_params(x.to(self.device))
        return loc, log_scale.exp()

    @torch.no_grad()
    def sample(self, num_samples: int, *, mean=True):
        """Draw z ~ p(z) and decode; ``mean=True`` returns the likelihood's mean (e.g. pixel
        probabilities), else a sample of x."""
        if self.model.decoder.autoregressive:
            raise NotImplementedError("sampling from autoregressive decoders is not supported yet")
        z = self.model.prior((num_samples,)).sample()
        likelihood = self.model.likelihood(self.model.decoder(z))
        return likelihood.mean if mean else likelihood.sample()

    @torch.no_grad()
    def reconstruct(self, x):
        """Decode the posterior means of ``x``; returns the likelihood's mean."""
        loc, _ = self.encode(x)
        return self.model.likelihood(self.model.decoder(loc, x.to(self.device))).mean

    def save(self, path) -> None:
        """Write model and guide weights with their configuration, atomically."""
        config = {"format": CHECKPOINT_FORMAT, "model": _plain(asdict(self.config))}
        checkpoint.atomic_save(self._state_dict(config, len(self.history)), path)

    @classmethod
    def load(cls, path, *, device=None, **overrides) -> "SkipVAE":
        """Load a model written by :meth:`save`, or a run's ``best.pt``/``checkpoint.pt``
        (or a run directory, meaning its ``best.pt``)."""
        path = Path(path)
        if path.is_dir():
            path = path / BEST_FILE
        state = checkpoint.load(path)
        try:
            model_config = state["config"]["model"]
        except (KeyError, TypeError):
            raise CheckpointError(f"{path} holds no model configuration") from None
        vae = cls.from_config(model_config, device=device, **overrides)
        vae._load_states(state)
        return vae


def _config_differences(saved: dict, current: dict) -> list[tuple[str, object, object]]:
    differences = []
    for section in ("model", "train", "run"):
        a, b = saved.get(section, {}), current.get(section, {})
        for key in sorted(set(a) | set(b)):
            if (section, key) not in RESUMABLE_CHANGES and a.get(key) != b.get(key):
                differences.append((f"{section}.{key}", a.get(key), b.get(key)))
    return differences


def _write_metrics(run_dir: Path, history: list[dict]) -> None:
    checkpoint.atomic_write_text(
        run_dir / METRICS_FILE, "".join(json.dumps(record) + "\n" for record in history)
    )
