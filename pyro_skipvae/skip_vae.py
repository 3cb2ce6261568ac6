"""The front door: :class:`SkipVAE` builds, fits, evaluates, samples, saves and loads.

>>> from pyro_skipvae import SkipVAE
>>> from pyro_skipvae.data import load_dataset
>>> splits = load_dataset("mnist", train_size=5000)                     # doctest: +SKIP
>>> vae = SkipVAE(splits.data_shape, latent_dim=32, skip=True, seed=0)   # doctest: +SKIP
>>> history = vae.fit(splits.train, val=splits.val, num_epochs=2,
...                   binarize="dynamic", run_dir="runs/demo")           # doctest: +SKIP
>>> history[-1]["val_elbo"]                                              # doctest: +SKIP
"""

import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import Predictive

from . import checkpoint, configs
from .configs import component_name as _name
from .configs import field_defaults as _defaults
from .configs import plain as _plain
from .data import prepare
from .diagnostics import diagnose, evaluate_elbo
from .errors import ConfigError
from .guides import ENCODERS, GUIDES
from .guides.encoders import Encoder
from .infer import INFERENCES, Optimizer, distributed, kl_schedule, train
from .infer.compile import check_training, compile_networks
from .infer.elbos import build_elbo, check_inference
from .infer.fit import FitData, prepare_data
from .infer.precision import autocast_networks
from .lock import holding_lock
from .loggers import build_loggers
from .models import DECODERS, LIKELIHOODS, PRIORS, Decoder, Likelihood, Model, Prior
from .modes import evaluating
from .run import CHECKPOINT_FORMAT, Run, load_weights, read_weights, weights_state
from .sites import LATENT_SITE, OBSERVED_SITE

#: names that moved to :mod:`pyro_skipvae.configs`; the old path warns (see ``__getattr__``)
_MOVED = ("ModelConfig", "TrainConfig")


def __getattr__(name):
    """``pyro_skipvae.skip_vae.TrainConfig`` (and ``ModelConfig``): the class from
    :mod:`pyro_skipvae.configs`, with a :class:`DeprecationWarning` (PEP 562)."""
    if name in _MOVED:
        warnings.warn(
            f"pyro_skipvae.skip_vae.{name} moved to pyro_skipvae.configs.{name} (also "
            f"importable as pyro_skipvae.{name}); the old path will be removed",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(configs, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _component_options(registry, name, options, filled, hidden_dims=None):
    """The options of a named component with its defaults filled in (and ``hidden_dims``
    applied if the component takes it and the options do not set it)."""
    options = dict(options or {})
    if not isinstance(name, str):
        return options, False
    valid = registry.options(name, filled=filled)
    takes_hidden = valid is None or "hidden_dims" in valid
    if hidden_dims is not None and takes_hidden:
        options.setdefault("hidden_dims", tuple(hidden_dims))
    return _plain({**registry.defaults(name, filled=filled), **options}), takes_hidden


class SkipVAE:
    r"""A VAE whose decoder may feed z into every layer (Dieng et al. 2019).

    Generative model p(z) p(x | z) with ``h_l = f(W_l h_{l-1} + U_l z)`` in the decoder
    (``skip=True``) or the standard VAE (``skip=False``); amortized guide
    q(z|x) = N(μ(x), diag σ²(x)).

    :param tuple data_shape: shape of one datapoint, e.g. ``(1, 28, 28)``.
    :param int latent_dim: size of z (default 32).
    :param tuple hidden_dims: shorthand for the ``hidden_dims`` option of every component
        that takes one (the MLP encoder and decoder; their default is ``(1024, 1024)``).
    :param bool skip: generative skip connections (default True).
    :param decoder: registry name in :data:`~pyro_skipvae.models.DECODERS` (default ``"mlp"``)
        or a :class:`~pyro_skipvae.models.Decoder` instance.
    :param encoder: registry name in :data:`~pyro_skipvae.guides.ENCODERS` or an instance.
    :param prior: name in :data:`~pyro_skipvae.models.PRIORS` (``"normal"``,
        ``"learned-normal"``, ``"mixture"``) or a :class:`~pyro_skipvae.models.Prior`.
    :param likelihood: name in :data:`~pyro_skipvae.models.LIKELIHOODS` (``"bernoulli"``,
        ``"continuous-bernoulli"``, ``"normal"``, ``"categorical"``,
        ``"discretized-logistic"``) or an instance.
    :param guide: name in :data:`~pyro_skipvae.guides.GUIDES` (``"normal"``, the default,
        or ``"flow"``), taking the encoder as its first argument.
    :param dict decoder_options: options of a named decoder (e.g. ``hidden_dims``); likewise
        ``encoder_options``, ``prior_options`` (e.g. ``num_components``),
        ``likelihood_options`` (e.g. ``num_categories``) and ``guide_options`` (e.g.
        ``num_flows``). An unknown option is a :class:`~pyro_skipvae.errors.ConfigError`
        naming the valid ones.
    :param str device: ``"cpu"`` (default), ``"cuda"`` or ``"cuda:N"``; under torchrun a bare
        ``"cuda"`` means ``cuda:$LOCAL_RANK``.
    :param int seed: if given, seeds Pyro's RNGs before the weights are initialised.
    :param compile: :func:`torch.compile` the encoder and decoder networks inside the Pyro
        model and guide: ``False`` (default), ``True`` (= ``"default"``) or a mode name,
        ``"reduce-overhead"`` for CUDA graphs (CUDA only; ``"default"`` elsewhere). Same
        losses within float tolerance, same state-dict keys; what cannot be compiled is
        refused by :meth:`fit` (see :mod:`pyro_skipvae.infer.compile`).
    :param str precision: ``"32"`` (default) or ``"bf16-mixed"``: the encoder and decoder
        networks run under bfloat16 :func:`torch.autocast`, while log-likelihoods, KL terms,
        the ELBO, refinement and optimizer stay in float32 (see
        :mod:`pyro_skipvae.infer.precision`). Weights are float32 either way, so checkpoints
        move between precisions. A CUDA device without bfloat16 is refused.

    Every component may also be named by import path, ``"module:attribute"`` (a class or
    factory with the registry's signature); the path is stored in ``config.json``.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        *,
        latent_dim: int = 32,
        hidden_dims: Sequence[int] | None = None,
        skip: bool = True,
        decoder: str | Decoder = "mlp",
        encoder: str | Encoder = "mlp",
        prior: str | Prior = "normal",
        likelihood: str | Likelihood = "bernoulli",
        guide: str | torch.nn.Module = "normal",
        decoder_options: dict[str, Any] | None = None,
        encoder_options: dict[str, Any] | None = None,
        prior_options: dict[str, Any] | None = None,
        likelihood_options: dict[str, Any] | None = None,
        guide_options: dict[str, Any] | None = None,
        device: str | torch.device | None = None,
        seed: int | None = None,
        compile: bool | str = False,
        precision: str = "32",
    ) -> None:
        decoder_options, decoder_hidden = _component_options(
            DECODERS, decoder, decoder_options, ("latent_dim", "output_shape", "skip"), hidden_dims
        )
        encoder_options, encoder_hidden = _component_options(
            ENCODERS, encoder, encoder_options, ("data_shape", "latent_dim"), hidden_dims
        )
        if hidden_dims is not None and not (decoder_hidden or encoder_hidden):
            raise ConfigError(
                f"hidden_dims sets the MLPs' widths, but neither decoder {_name(decoder)!r} nor "
                f"encoder {_name(encoder)!r} takes it; use their options instead"
            )
        self.config = configs.ModelConfig(
            data_shape,
            latent_dim,
            bool(skip),
            _name(decoder),
            _name(encoder),
            _name(prior),
            _name(likelihood),
            decoder_options,
            encoder_options,
            _component_options(PRIORS, prior, prior_options, ("latent_dim",))[0],
            _component_options(LIKELIHOODS, likelihood, likelihood_options, ("data_shape",))[0],
            _name(guide),
            _component_options(GUIDES, guide, guide_options, ("encoder", "name"))[0],
            compile=compile,
            precision=precision,
        )
        if seed is not None:
            pyro.set_rng_seed(seed)
        c = self.config
        likelihood = LIKELIHOODS.build(likelihood, c.data_shape, options=c.likelihood_options)
        decoder = DECODERS.build(
            decoder, c.latent_dim, likelihood.param_shape, skip=c.skip, options=c.decoder_options
        )
        prior = PRIORS.build(prior, c.latent_dim, options=c.prior_options)
        encoder = ENCODERS.build(encoder, c.data_shape, c.latent_dim, options=c.encoder_options)
        guide = GUIDES.build(guide, encoder, options=c.guide_options)
        # The front door is the one place that knows both sides: a prior defined through
        # the encoder (VampPrior) gets the guide's here.
        if hasattr(prior, "attach_encoder"):
            prior.attach_encoder(getattr(guide, "encoder", encoder))
        self.device = distributed.resolve_device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(
                f"device {str(self.device)!r} was requested but torch finds no CUDA device here"
            )
        self.model = Model(prior, decoder, likelihood).to(self.device)
        self.guide = guide.to(self.device)
        networks = (self.model.decoder, getattr(self.guide, "encoder", encoder))
        # autocast inside, compile outside: the compiler traces through the autocast region
        autocast_networks(networks, c.precision, self.device)
        #: the compile mode that runs here (a CUDA-graph mode falls back off CUDA), or False
        self.compiled = compile_networks(networks, c.compile, self.device)
        self.history: list[dict] = []

    @classmethod
    def from_config(cls, config: dict | configs.ModelConfig, **overrides: Any) -> "SkipVAE":
        """Rebuild from a :class:`~pyro_skipvae.configs.ModelConfig` (or its dict); custom
        components must be passed again in ``overrides`` (e.g. ``prior=MyPrior(...)``)."""
        options = asdict(config) if isinstance(config, configs.ModelConfig) else dict(config)
        options.update(overrides)
        for key in ("decoder", "encoder", "prior", "likelihood", "guide"):
            if isinstance(options.get(key), str) and options[key].startswith("custom:"):
                raise ConfigError(
                    f"this model used a custom {key} ({options[key][7:]}); pass it again as {key}=..."
                )
        data_shape = options.pop("data_shape")
        return cls(data_shape, **options)

    def parameters(self) -> list[torch.nn.Parameter]:
        """Every trainable parameter of model and guide, once each."""
        return list(dict.fromkeys([*self.model.parameters(), *self.guide.parameters()]))

    # ------------------------------------------------------------------ training
    @holding_lock("fit", enabled=distributed.is_main)  # RunLockedError if run_dir is in use
    def fit(
        self,
        train_data: torch.Tensor,
        *,
        val: torch.Tensor | None = None,
        run_dir: str | os.PathLike | None = None,
        resume: bool = False,
        run_info: dict[str, Any] | None = None,
        progress: bool = False,
        loggers: Sequence[Any] = (),
        log_every_n_steps: int = 50,
        **options: Any,
    ) -> list[dict[str, Any]]:
        """Fit by (semi-amortized) stochastic variational inference; return one metrics
        record per epoch.

        :param torch.Tensor train_data: training data, shape ``(N, *data_shape)``; with
            ``binarize`` set, intensities in [0, 1].
        :param torch.Tensor val: validation data scored after every epoch (``val_elbo``,
            ``val_kl``, the refined bound for semi-amortized runs, and ``val_ppl`` for
            sequences); the best-scoring epoch is kept as ``best.pt`` (see
            :mod:`pyro_skipvae.run`).
        :param run_dir: if given, writes ``config.json``, ``checkpoint.pt`` (every epoch),
            ``best.pt`` and ``metrics.jsonl`` there, all atomically. The log records go
            through :mod:`logging`; ``with pyro_skipvae.run.train_log(run_dir):`` around the
            call also appends them to ``train.log`` there, as ``skipvae fit`` does.
        :param bool resume: continue the run in ``run_dir`` from its last checkpoint; the
            result is identical to an uninterrupted run.
        :param dict run_info: extra JSON-able facts stored in ``config.json`` under ``"run"``
            and checked on resume (e.g. the data set name).
        :param bool progress: show a progress bar.
        :param loggers: live curves besides the files: names in
            :data:`~pyro_skipvae.loggers.LOGGERS` (``"tensorboard"``: ``<run_dir>/tensorboard``)
            or logger objects; ``log_every_n_steps`` (default 50) paces the per-step curves.
        :param options: the fields of :class:`~pyro_skipvae.configs.TrainConfig`
            (``num_epochs``, ``batch_size``, ``optimizer``, ``learning_rate``, ``clip_norm``,
            ``elbo``, ``inference``, ...), checked by it before any data are touched.

        **Data-parallel.** Called in every process of a :mod:`torch.distributed` group (e.g.
        launched by ``torchrun``), the processes train one model together: each steps on its
        share of every global minibatch of ``batch_size`` and the gradients are averaged,
        validation is split between them and its means combined, and only rank 0 writes the
        run folder (see :mod:`pyro_skipvae.infer.distributed` and :mod:`pyro_skipvae.run`).

        :raises ConfigError: bad options, or ``resume`` against a different configuration.
        :raises DataError: data of the wrong shape, non-finite, or outside the likelihood's support.
        :raises NonFiniteLossError: a NaN/inf loss; the last checkpoint stays intact.

        **Sequences** (a likelihood that counts tokens, :meth:`~pyro_skipvae.models.Likelihood.num_tokens`,
        e.g. padded text): minibatches are drawn by length and trimmed to their longest
        sequence (:func:`~pyro_skipvae.data.text.bucket_batches`); the validation set is
        scored in order of length (its means do not depend on the order; a semi-amortized
        run's refinement minibatches then hold sentences of similar length, as the authors'
        do) and ``val_ppl`` = exp(−Σ ELBO / Σ tokens) is recorded beside ``val_elbo``.
        """
        cfg = configs.TrainConfig.from_options(options)
        data = self._prepare(train_data, val, cfg)
        # Each rank its own Monte-Carlo noise (the data order comes from the run's generator).
        pyro.set_rng_seed(distributed.rank_seed(cfg.seed))
        inference = self._inference(cfg, sequences=data.sequences)
        data.check(inference, self.guide)  # e.g. aggressive without val: before any file
        loggers = build_loggers(loggers, log_every_n_steps, data)
        run = self._open_run(run_dir, cfg, inference, run_info, resume=resume, loggers=loggers)
        try:  # a logger that fails to start: those started are still closed
            loggers.start(run)
            if not run.finished():
                self._train(inference, data, run, cfg, progress=progress)
        finally:
            loggers.close()
        self.history = run.history
        return self.history

    def _prepare(self, train_data, val, cfg: configs.TrainConfig) -> FitData:
        """The data of a fit, checked and prepared for the loop (:func:`~.infer.fit.prepare_data`)."""
        if cfg.early_stopping_patience is not None and val is None:
            raise ConfigError(
                "early_stopping_patience needs validation data (val=...), found val=None"
            )
        return prepare_data(
            train_data,
            val,
            self.model.likelihood,
            binarization=cfg.binarize,
            batch_size=cfg.batch_size,
            eval_batch_size=cfg.eval_batch_size,
            device=self.device,
        )

    def _train(
        self, inference, data: FitData, run: Run, cfg: configs.TrainConfig, *, progress
    ) -> None:
        """The remaining epochs of the run (:func:`~.infer.fit.train`): the run is called back
        after each epoch, and the validation set scored before it."""
        train(
            inference,
            data.train,
            num_epochs=cfg.num_epochs,
            batch_size=cfg.batch_size,
            generator=run.generator,
            start_epoch=len(run.history),
            annealing=kl_schedule(cfg.kl_warmup_epochs, cfg.kl_start, cfg.kl_cycle_epochs),
            evaluate=data.validation(inference, self.model, self.guide),
            on_epoch_end=run.end_epoch,
            on_step=run.loggers.log_step if run.loggers else None,
            device=self.device,
            progress=progress,
            **data.loop_options(),
        )

    def _inference(self, cfg: configs.TrainConfig, *, sequences: bool = False):
        """The inference object of a fit: named (built with :meth:`_optimizer`) or the user's
        own, checked against this model's compiled networks
        (:func:`~.infer.compile.check_training`)."""
        elbo = build_elbo(cfg.elbo, num_particles=cfg.num_particles, options=cfg.elbo_options)
        if isinstance(cfg.inference, str):
            options = dict(cfg.inference_options)
            if cfg.inference == "semi-amortized":
                options.setdefault("refine_batch_size", cfg.batch_size)
            inference = INFERENCES.build(
                cfg.inference, self.model, self.guide, self._optimizer(cfg), elbo, options=options
            )
        else:
            inference = check_inference(cfg.inference)
        check_training(self.compiled, inference, sequences=sequences)
        return inference

    def _optimizer(self, cfg: configs.TrainConfig) -> Optimizer:
        return Optimizer(
            self.parameters(),
            name=cfg.optimizer,
            learning_rate=cfg.learning_rate,
            clip_norm=cfg.clip_norm,
            lr_decay=cfg.lr_decay,
            lr_decay_min_epochs=cfg.lr_decay_min_epochs,
            lr_decay_patience=cfg.lr_decay_patience,
            min_learning_rate=cfg.min_learning_rate,
        )

    def _open_run(self, run_dir, cfg, inference, run_info, *, resume, **logging) -> Run:
        """Start the run (write, or check and restore from, its folder), give every rank the
        same weights and put the networks in training mode."""
        world = distributed.world_size()
        info = {**(run_info or {}), "device": str(self.device)}
        config = {
            "format": CHECKPOINT_FORMAT,
            "model": _plain(asdict(self.config)),
            "train": cfg.to_json(),
            "run": _plain({**info, **({"world_size": world} if world > 1 else {})}),
        }
        run = Run(
            run_dir,
            config,
            model=self.model,
            guide=self.guide,
            optimizer=inference.optim,
            inference=inference,
            # the same data order on every rank
            generator=torch.Generator().manual_seed(cfg.seed),
            defaults={
                "model": _defaults(configs.ModelConfig),
                "train": _defaults(configs.TrainConfig),
            },
            patience=cfg.early_stopping_patience,
            not_before=cfg.kl_warmup_epochs,
            **logging,
        )
        run.start(resume=resume, init_from=cfg.init_from)
        distributed.broadcast_states(self.model, self.guide)
        self.model.train()
        self.guide.train()
        return run

    # ------------------------------------------------------------------ using a fit
    def evaluate(
        self, data: torch.Tensor, *, batch_size: int = 500, num_particles: int = 1
    ) -> dict[str, float]:
        """Mean per-datapoint ``elbo`` and ``kl`` (nats) of the amortized guide over ``data``
        (already in the likelihood's support). See :func:`~pyro_skipvae.diagnostics.evaluate_elbo`."""
        data = prepare(data, self.model.likelihood)
        with evaluating(self.model, self.guide):
            result = evaluate_elbo(
                self.model,
                self.guide,
                data.to(self.device),
                batch_size=batch_size,
                num_particles=num_particles,
            )
        return {"elbo": result["elbo"], "kl": result["kl"]}

    def diagnose(self, data: torch.Tensor, **options: Any) -> dict[str, Any]:
        """Collapse diagnostics of this model on ``data`` (already in the likelihood's support):
        ELBO, KL, full-set MI, aggregate KL, active units, IW-NLL with Pareto k̂ and, given
        labels, posterior-mean accuracy. Options and result: :func:`pyro_skipvae.diagnostics.diagnose`."""
        data = prepare(data, self.model.likelihood)
        with evaluating(self.model, self.guide):
            return diagnose(self.model, self.guide, data.to(self.device), **options)

    @torch.no_grad()
    def encode(
        self, x: torch.Tensor, *, num_samples: int = 256
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior means and standard deviations ``(loc, scale)`` of q(z | x): exact for
        the Gaussian guide, from ``num_samples`` draws for families without closed-form
        moments (the flow guide)."""
        with evaluating(self.guide):
            q = self.guide.distribution(*self.guide.local_params(x.to(self.device)))
            try:
                return q.mean, q.stddev
            except NotImplementedError:
                z = q.sample((num_samples,))
                return z.mean(0), z.std(0)

    @torch.no_grad()
    def predictive(
        self, x: torch.Tensor, *, num_samples: int = 1, posterior: bool = True
    ) -> dict[str, torch.Tensor]:
        """Posterior predictive (z ~ q(z|x), default) or prior predictive (z ~ p(z),
        ``posterior=False``) draws of ``"z"`` and ``"x"``, with :class:`pyro.infer.Predictive`
        on the model made generative by :func:`pyro.poutine.uncondition`.

        :param torch.Tensor x: the data whose posterior is used (for the prior predictive
            only its length matters: one draw per row).
        :returns: ``{"z": (num_samples, N, latent_dim), "x": (num_samples, N, *data_shape)}``.
        :raises ConfigError: for autoregressive decoders, whose site ``"x"`` is teacher-forced
            on the observed x (use :meth:`sample`).
        """
        if getattr(self.model.decoder, "autoregressive", False):
            raise ConfigError(
                "predictive draws of x need a decoder that does not read x; this decoder is "
                "autoregressive (teacher-forced): use SkipVAE.sample"
            )
        x = prepare(x, self.model.likelihood).to(self.device)
        predictive = Predictive(
            poutine.uncondition(self.model),
            guide=self.guide if posterior else None,
            num_samples=num_samples,
            return_sites=[LATENT_SITE, OBSERVED_SITE],
            parallel=True,
        )
        with evaluating(self.model, self.guide):
            return predictive(x)

    @torch.no_grad()
    def sample(self, num_samples: int, *, mean: bool = True) -> torch.Tensor:
        """Draw z ~ p(z) and decode: the likelihood's mean (e.g. pixel probabilities) when
        ``mean``, else a sample of x. Autoregressive decoders always return samples, drawn
        position by position (a teacher-forced mean would look right whatever z is)."""
        with evaluating(self.model):
            z = self.model.prior((num_samples,)).sample()
            return self._decode(z, mean)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, *, mean: bool = True) -> torch.Tensor:
        """Decode the posterior means of ``x`` (as :meth:`sample` decodes)."""
        loc, _ = self.encode(x)
        with evaluating(self.model):
            return self._decode(loc, mean)

    def _decode(self, z, mean):
        decoder, likelihood = self.model.decoder, self.model.likelihood
        if mean and not decoder.autoregressive:
            return likelihood(decoder(z)).mean
        return decoder.sample(z, likelihood)

    def save(self, path: str | os.PathLike) -> None:
        """Write model and guide weights with their configuration, atomically."""
        config = {"format": CHECKPOINT_FORMAT, "model": _plain(asdict(self.config))}
        checkpoint.atomic_save(
            weights_state(config, len(self.history), self.model, self.guide), path
        )

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, device: str | torch.device | None = None, **overrides: Any
    ) -> "SkipVAE":
        """Load a model written by :meth:`save`, or a run's ``best.pt``/``checkpoint.pt``
        (or a run directory, meaning its ``best.pt``)."""
        path, state = read_weights(path)
        model_config = state["config"]["model"]
        vae = cls.from_config(model_config, device=device, **overrides)
        load_weights(vae.model, vae.guide, state, path)
        return vae
