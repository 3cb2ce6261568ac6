"""The two configurations of a run: :class:`ModelConfig` (what to build) and
:class:`TrainConfig` (how to fit it), ``config.json``'s ``"model"`` and ``"train"``.

This is the one place that validates options and their combinations: the front door
(:class:`~pyro_skipvae.SkipVAE`) and the ``skipvae`` command both construct these classes,
so a Python user and a command-line user get the same typed error
(:class:`~pyro_skipvae.errors.ConfigError`), worded in the fields' names, e.g.
``elbo_options['alpha']`` or ``inference_options['mode']``.

>>> from pyro_skipvae.configs import TrainConfig
>>> TrainConfig(elbo="iwae", elbo_options={"alpha": 0.2})  # doctest: +SKIP
ConfigError: elbo_options['alpha']: elbo 'iwae' takes no option 'alpha' ...

:func:`resolve_components` picks a model's components the way ``skipvae fit`` does: what the
user named, else what the data imply (a text vocabulary: LSTMs and a categorical likelihood),
else :class:`ModelConfig`'s defaults.

(These classes lived in :mod:`pyro_skipvae.skip_vae` until 0.1; the old import path still
works, with a :class:`DeprecationWarning`.)
"""

import json
import os
from dataclasses import MISSING, asdict, dataclass, field, fields

from .checks import check_positive
from .data import BINARIZATIONS
from .errors import ConfigError
from .infer import ELBOS, INFERENCES, kl_schedule
from .infer.compile import compile_mode
from .infer.optim import LR_DECAYS, OPTIMIZERS
from .infer.precision import precision_mode

#: the components :func:`resolve_components` chooses; the guide is not implied by data
COMPONENT_KINDS = ("decoder", "encoder", "prior", "likelihood")
#: arguments the library passes to an inference factory itself: (model, guide, optim, loss)
INFERENCE_ARGUMENTS = 4
#: the prefix of config.json's name for a component passed as an object ("custom:MyELBO")
CUSTOM = "custom:"


@dataclass
class ModelConfig:
    """Everything needed to rebuild a model and guide (``config.json``'s ``"model"``).

    Components are registry names or import paths ``"module:attribute"``; their options are
    the keyword arguments of the component's factory, stored with their defaults filled in, so
    a run rebuilds identically.
    """

    data_shape: tuple[int, ...]
    latent_dim: int = 32
    skip: bool = True
    decoder: str = "mlp"
    encoder: str = "mlp"
    prior: str = "normal"
    likelihood: str = "bernoulli"
    decoder_options: dict = field(default_factory=dict)
    encoder_options: dict = field(default_factory=dict)
    prior_options: dict = field(default_factory=dict)
    likelihood_options: dict = field(default_factory=dict)
    guide: str = "normal"
    guide_options: dict = field(default_factory=dict)
    compile: bool | str = False
    precision: str = "32"

    def __post_init__(self):
        self.data_shape = tuple(int(d) for d in self.data_shape)
        self.compile = compile_mode(self.compile)
        self.precision = precision_mode(self.precision)
        check_positive(latent_dim=self.latent_dim)
        if not self.data_shape or min(self.data_shape) < 1:
            raise ConfigError(f"data_shape must be non-empty and positive, found {self.data_shape}")


@dataclass
class TrainConfig:
    """The options of :meth:`SkipVAE.fit <pyro_skipvae.SkipVAE.fit>` (``config.json``'s
    ``"train"``), with defaults; every value and combination is checked on construction.

    :param int num_epochs: total epochs (default 10); on resume, the run continues to it.
    :param int batch_size: minibatch size (default 50, as in the authors' image code).
    :param str optimizer: ``"adam"`` (default) or ``"sgd"``; it steps on the gradient of the
        per-datapoint loss (see :mod:`pyro_skipvae.infer.optim`).
    :param float learning_rate: 1e-3 by default (the authors' images; text: SGD with 1).
    :param float clip_norm: clip the global norm of the per-datapoint gradient at this value
        (:func:`torch.nn.utils.clip_grad_norm_`; the authors use 5; default None: no clip).
    :param str lr_decay: ``"none"`` (default), ``"plateau"``: halve the learning rate every
        epoch once the validation bound stalls, as the SA-VAE text script does, or
        ``"plateau-restore"``: halve it and restore the best weights each time the bound
        stalls for ``lr_decay_patience`` epochs, as He et al.'s text script does (see
        :mod:`pyro_skipvae.infer.optim`).
    :param int lr_decay_min_epochs: a stall before this epoch does not start the decay (15).
    :param int lr_decay_patience: ``"plateau-restore"``'s epochs without a better bound before
        each halving (default 2).
    :param float min_learning_rate: stop once the decayed rate is below this (default 0).
    :param int early_stopping_patience: stop once this many epochs in a row have not improved
        the validation bound (the selection metric, see :mod:`pyro_skipvae.run`), never
        before the KL warm-up has ended; needs validation data. Default None: train for
        ``num_epochs``.
    :param float kl_warmup_epochs: β rises linearly from ``kl_start`` to 1 over this many
        epochs (default 10 from 0.1, as in the papers' scripts; 0 disables warm-up).
    :param float kl_start: β at the start of training (default 0.1).
    :param float kl_cycle_epochs: if given, repeat the warm-up every this many epochs
        (cyclical annealing, Fu et al. 2019; see
        :class:`~pyro_skipvae.infer.annealing.CyclicalAnnealing`); default None: warm up once.
    :param elbo: a name in :data:`~pyro_skipvae.infer.ELBOS` (``"trace"``, the default;
        ``"mean-field"``, ``"tracegraph"``, ``"renyi"``, ``"iwae"``, ``"jit"``,
        ``"free-bits"``), an import path, or a Pyro ELBO instance (a Rényi/IWAE instance is
        wrapped in :class:`~pyro_skipvae.infer.elbos.PerDatapointBound`).
    :param int num_particles: samples per datapoint of the ELBO (default 1; vectorised).
    :param dict elbo_options: further options of a named ELBO (e.g. ``alpha`` of ``"renyi"``);
        a key the named ELBO does not take is a :class:`~pyro_skipvae.errors.ConfigError`
        naming the ELBOs that do take it.
    :param inference: ``"svi"`` (default), ``"semi-amortized"`` or an object with ``step``.
    :param dict inference_options: options of a named inference (e.g. ``mode``,
        ``num_refine_steps`` of ``"semi-amortized"``), checked the same way.
    :param str binarize: ``"dynamic"`` (resampled every epoch), ``"threshold"`` or ``"none"``
        (default); validation data are binarised once, with a fixed seed.
    :param int seed: seeds the data order, binarisation and Monte-Carlo draws (default 0).
    :param int eval_batch_size: minibatch size of validation (default 500).
    :param str init_from: start from the weights of another run of the same model (a run
        folder, meaning its ``best.pt``, or a weights file), e.g. semi-amortized fine-tuning
        of a converged amortized model; the optimizer and the history start afresh (see
        :func:`~pyro_skipvae.run.initial_weights`). Default None: freshly initialised weights.
    """

    num_epochs: int = 10
    batch_size: int = 50
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    clip_norm: float | None = None
    lr_decay: str = "none"
    lr_decay_min_epochs: int = 15
    lr_decay_patience: int = 2
    min_learning_rate: float = 0.0
    early_stopping_patience: int | None = None
    kl_warmup_epochs: float = 10.0
    kl_start: float = 0.1
    kl_cycle_epochs: float | None = None
    elbo: object = "trace"
    num_particles: int = 1
    elbo_options: dict = field(default_factory=dict)
    inference: object = "svi"
    inference_options: dict = field(default_factory=dict)
    binarize: str = "none"
    seed: int = 0
    eval_batch_size: int = 500
    init_from: str | None = None

    def __post_init__(self):
        if self.init_from is not None:
            self.init_from = os.fspath(self.init_from)
        check_positive(
            num_epochs=self.num_epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            eval_batch_size=self.eval_batch_size,
            num_particles=self.num_particles,
        )
        if self.clip_norm is not None:
            check_positive(clip_norm=self.clip_norm)
        if self.early_stopping_patience is not None:
            check_positive(early_stopping_patience=self.early_stopping_patience)
        check_positive(lr_decay_patience=self.lr_decay_patience)
        if self.lr_decay == "plateau-restore" and self.early_stopping_patience is not None:
            raise ConfigError(
                "lr_decay 'plateau-restore' ends training itself (its rate falls below "
                "min_learning_rate after repeated stalls) and restores the best weights at each "
                "stall, so early stopping would cut its halvings short; found "
                f"early_stopping_patience={self.early_stopping_patience}: drop one of the two"
            )
        if self.lr_decay != "none" and self.min_learning_rate > self.learning_rate:
            raise ConfigError(
                f"min_learning_rate must not exceed learning_rate (training stops once the rate "
                f"is below the minimum, so it would stop before its first step); found "
                f"{self.min_learning_rate} and {self.learning_rate}"
            )
        if self.kl_warmup_epochs < 0 or not 0 < self.kl_start <= 1:
            raise ConfigError(
                f"expected kl_warmup_epochs >= 0 and 0 < kl_start <= 1, found "
                f"{self.kl_warmup_epochs} and {self.kl_start}"
            )
        kl_schedule(self.kl_warmup_epochs, self.kl_start, self.kl_cycle_epochs)
        OPTIMIZERS.get(self.optimizer)
        for name, value, valid in (
            ("lr_decay", self.lr_decay, LR_DECAYS),
            ("binarize", self.binarize, BINARIZATIONS),
        ):
            if value not in valid:
                raise ConfigError(f"unknown {name} {value!r}; expected one of: {', '.join(valid)}")
        self.elbo_options = dict(self.elbo_options or {})
        self.inference_options = dict(self.inference_options or {})
        check_component_options(ELBOS, self.elbo, self.elbo_options)
        check_component_options(
            INFERENCES, self.inference, self.inference_options, num_args=INFERENCE_ARGUMENTS
        )

    @classmethod
    def from_options(cls, options: dict) -> "TrainConfig":
        """The config of ``fit(**options)``; an unknown key is a ConfigError listing the fields."""
        unknown = sorted(set(options) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(
                f"unknown fit option(s) {', '.join(unknown)}; valid options: "
                + ", ".join(f.name for f in fields(cls))
            )
        return cls(**options)

    def to_json(self) -> dict:
        """``config.json``'s ``"train"``: user objects become ``"custom:ClassName"``, and a
        semi-amortized run's ``inference_options`` hold every refinement setting, defaults
        included (:func:`inference_settings`)."""
        values = asdict(self)
        values["elbo"] = component_name(self.elbo)
        values["inference"] = component_name(self.inference)
        values["inference_options"] = inference_settings(
            values["inference"], self.inference_options, batch_size=self.batch_size
        )
        return plain(values)


#: the inference whose every setting config.json records (the refinement changes results)
SEMI_AMORTIZED = "semi-amortized"
#: inferences new enough that config.json has recorded every setting of each of their runs
RECORDED_IN_FULL = (SEMI_AMORTIZED, "aggressive")
#: the commit before which the refinement ascended the training objective (refine_kl "objective")
REFINE_KL_CHANGED = "a07db1e"


def inference_settings(inference, options: dict, *, batch_size: int) -> dict:
    """``inference_options`` as ``config.json`` records them: for ``"semi-amortized"``
    every setting of :class:`~pyro_skipvae.infer.SemiAmortizedSVI` with its default filled in
    (``mode``, ``refine_batch_size`` = the training ``batch_size``, K, η, ρ, the clip, the
    coordinates and ``refine_kl``), so a later version whose defaults differ still rebuilds
    the refinement the run was trained with; likewise for ``"aggressive"``; any other
    inference's options as given."""
    options = dict(options or {})
    if inference not in RECORDED_IN_FULL:
        return options
    settings = {
        **INFERENCES.defaults(inference, filled=("model", "guide", "optim", "loss")),
        **options,
    }
    if inference == SEMI_AMORTIZED and settings.get("refine_batch_size") is None:
        settings["refine_batch_size"] = batch_size
    return plain(settings)


def recorded_config(config: dict, run_dir, refine_kl: str | None = None) -> dict:
    """A saved ``config.json`` (or a checkpoint's copy) with its ``"train"`` read by
    :func:`recorded_train_config`."""
    if "train" not in config:
        return config
    return {**config, "train": recorded_train_config(config["train"], run_dir, refine_kl=refine_kl)}


def recorded_train_config(train: dict, run_dir, *, refine_kl: str | None = None) -> dict:
    """A run's ``config.json`` ``"train"`` as this version reads it: for an inference that
    is recorded in full (:data:`RECORDED_IN_FULL`), every setting with the defaults filled in
    (:func:`inference_settings`), so a folder written before its defaults were recorded (an
    aggressive run between commits 1334c10 and 576b958) compares equal to a resume's config.

    A semi-amortized run written before every setting was recorded lacks ``refine_kl``. With
    ``elbo="mean-field"`` both rules it may have been trained under ascend the analytic-KL
    ELBO, so it is read as ``"analytic"``; with another objective they differ (before commit
    a07db1e the refinement ascended the training objective itself, ``"objective"``; since,
    the ELBO with the analytic KL), and it is refused unless ``refine_kl`` says which.

    :raises ConfigError: an older semi-amortized run whose rule cannot be told; the message
        says how to record it.
    """
    inference = train.get("inference")
    if inference not in RECORDED_IN_FULL:
        return train
    options = dict(train.get("inference_options") or {})
    if inference == SEMI_AMORTIZED and "refine_kl" not in options:
        if refine_kl is None and train.get("elbo") != "mean-field":
            raise ConfigError(
                f"{run_dir}/config.json records no refine_kl for this semi-amortized run (it "
                "was written before every refinement setting was recorded), and with elbo "
                f"{train.get('elbo')!r} the two rules it may have been trained under differ: "
                f"runs trained before commit {REFINE_KL_CHANGED} refined the training "
                "objective itself (refine_kl 'objective'), later ones the ELBO with the "
                'analytic KL (\'analytic\'); add "refine_kl": "objective" or "analytic" to '
                '"train" -> "inference_options" in that file, then diagnose, or resume with '
                "the same refine_kl (skipvae fit --refine-kl)"
            )
        options["refine_kl"] = refine_kl or "analytic"
    settings = inference_settings(inference, options, batch_size=train.get("batch_size", 50))
    return {**train, "inference_options": settings}


def check_component_options(registry, component, options: dict, *, num_args: int = 0) -> None:
    """Options of a component chosen by name must be options its factory takes.

    The registry's :meth:`~pyro_skipvae.registry.Registry.build` makes the same test when the
    component is built; here it runs before any data are read or weights made, and the
    message uses the config's field names and names the components that do take the option
    (``elbo_options['alpha']`` belongs to ``"renyi"``, ``inference_options['mode']`` to
    ``"semi-amortized"``).

    :raises ConfigError: options given with a component passed as an object, or keys its
        factory does not take.
    """
    label = f"{registry.kind}_options"
    # "custom:ClassName" is config.json's record of a user's object (component_name): a
    # config read back from a run folder holds it, and there is no factory to ask.
    if not isinstance(component, str) or component.startswith(CUSTOM):
        if options:
            raise ConfigError(
                f"{label} {sorted(options)} apply to a {registry.kind} chosen by name; "
                f"found a {type(component).__name__} instance"
            )
        return
    unknown, valid = registry.unknown_options(component, options, num_args=num_args)
    if not unknown:
        return
    keys = ", ".join(f"{label}[{key!r}]" for key in unknown)
    owners: dict[tuple, list[str]] = {}  # the components taking a key -> those keys
    for key in unknown:
        owners.setdefault(tuple(registry.taking(key, num_args=num_args)), []).append(repr(key))
    hints = "".join(
        f"; {', '.join(found)} {'is an option' if len(found) == 1 else 'are options'} of "
        f"{registry.kind} {' or '.join(map(repr, names))}"
        for names, found in owners.items()
        if names
    )
    raise ConfigError(
        f"{keys}: {registry.kind} {component!r} takes no such option (its options: "
        f"{', '.join(valid) or 'none'}){hints}"
    )


def resolve_components(vocabulary=None, **given) -> dict:
    """The decoder, encoder, prior and likelihood of a model of some data, with their options.

    Each is the one named in ``given`` (``decoder="lstm"``; None or absent: not named), else
    the one the data imply (a text data set's
    :meth:`Vocabulary.model_options <pyro_skipvae.data.text.Vocabulary.model_options>`: LSTM
    encoder and decoder, a categorical likelihood over the vocabulary), else
    :class:`ModelConfig`'s default. The implied options (e.g. ``num_categories``) apply only
    where the implied component is used, and ``given`` options win key by key.

    :param vocabulary: a :class:`~pyro_skipvae.data.text.Vocabulary` or None (image data,
        tensors from files).
    :param given: ``decoder``, ``decoder_options``, ... for the four kinds in
        :data:`COMPONENT_KINDS`.
    :returns: ``{"decoder": name, "decoder_options": {...}, ...}``, keyword arguments of
        :class:`~pyro_skipvae.SkipVAE`.

    >>> splits = load_dataset("ptb")                                    # doctest: +SKIP
    >>> SkipVAE(splits.data_shape, **resolve_components(splits.vocabulary,
    ...         decoder_options={"hidden_dim": 512}))                    # doctest: +SKIP
    """
    allowed = {*COMPONENT_KINDS, *(f"{kind}_options" for kind in COMPONENT_KINDS)}
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown component argument(s) {', '.join(unknown)}; expected: {', '.join(sorted(allowed))}"
        )
    implied = vocabulary.model_options() if vocabulary is not None else {}
    defaults = field_defaults(ModelConfig)
    components = {}
    for kind in COMPONENT_KINDS:
        name = given.get(kind) or implied.get(kind, defaults[kind])
        own = implied.get(f"{kind}_options", {}) if name == implied.get(kind) else {}
        components[kind] = name
        components[f"{kind}_options"] = {**own, **(given.get(f"{kind}_options") or {})}
    return components


def field_defaults(config_class) -> dict:
    """The JSON form of a config dataclass's field defaults (what
    :func:`~pyro_skipvae.run.config_differences` fills into an older ``config.json``)."""
    return plain({f.name: f.default for f in fields(config_class) if f.default is not MISSING})


def component_name(component) -> str:
    """The registry name of a component, or a marker for a user-supplied object."""
    return component if isinstance(component, str) else f"{CUSTOM}{type(component).__name__}"


def plain(obj):
    """JSON round trip: tuples become lists, so configs compare equal after a reload."""
    return json.loads(json.dumps(obj))
