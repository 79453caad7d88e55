"""Validation of ranges, names and combinations: a key out of range, or one that would do nothing
in the chosen combination, is a :class:`~largebatch.config.sections.ConfigError` naming the fix.

    >>> from largebatch.config.sections import Config
    >>> validate(Config())
"""

from __future__ import annotations

import dataclasses
import re
import typing

from largebatch.config.sections import Config, ConfigError, NoiseConfig, OptimConfig, TrainConfig

# ----------------------------------------------------------------------------------------------
# Validation of ranges and names

SCALING_RULES = ("none", "linear", "sqrt")
SCHEDULES = ("constant", "multistep", "paper", "cosine")
OPTIMIZERS = ("sgd", "lars")
LARS_FORMS = ("you2017", "optax", "timm", "larc")
"""The names of :data:`largebatch.optim.lars.FORMS` (a test keeps the two equal)."""
AMP_MODES = ("none", "bf16")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")
NOISE_PLACEMENTS = ("gradient", "update")
NOISE_KINDS = ("isotropic", "microbatch", "diagonal", "multiplicative")
NOISE_MATCHES = ("epoch", "step")
SAM_KINDS = ("none", "sam", "msam", "momentum")
SAM_DEFAULT_RHO = {"sam": 0.05, "msam": 0.05, "momentum": 0.3}
PENALTY_FORMS = ("double_backward", "finite_difference")
TRACKERS = ("tensorboard", "csv", "wandb", "mlflow")
"""The names ``train.trackers`` accepts (:data:`largebatch.engine.trackers.TRACKERS`)."""
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:(0|[1-9][0-9]*))?")
"""The device forms a config accepts; whether the device exists is checked when a run starts."""


def _choice(key: str, value: str, choices: typing.Iterable[str]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{key}: '{value}' is not one of: {', '.join(choices)}")


def _positive(key: str, value: float | int | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{key}: must be {bound}, got {value}")


def validate(cfg: Config) -> None:
    """Check ranges and fixed choices; raise :class:`ConfigError` naming the key and the fix.

    ``data.name`` and ``model.name`` are not checked here: the registries own their names
    (:func:`largebatch.data.registry.check_dataset_name`,
    :func:`largebatch.models.registry.check_model_name`), so this module imports neither.
    """
    d, m, t, o, n = cfg.data, cfg.model, cfg.train, cfg.optim, cfg.noise
    _positive("data.num_samples", d.num_samples)
    if not 0.0 < d.train_fraction < 1.0:
        raise ConfigError(f"data.train_fraction: must be in (0, 1), got {d.train_fraction}")
    if not 0.0 < d.val_fraction < 1.0:
        raise ConfigError(f"data.val_fraction: must be in (0, 1), got {d.val_fraction}")
    _positive("data.train_subset", d.train_subset)
    _positive("data.val_subset", d.val_subset)
    _positive("data.image_size", d.image_size)
    _positive("data.num_workers", d.num_workers, allow_zero=True)
    if not m.hidden or any(w <= 0 for w in m.hidden):
        raise ConfigError(f"model.hidden: must be a non-empty list of widths > 0, got {m.hidden}")
    _positive("model.channels", m.channels)
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout: must be in [0, 1), got {m.dropout}")
    _positive("model.ghost_batch_size", m.ghost_batch_size)
    _positive("train.epochs", t.epochs)
    _positive("train.global_batch_size", t.global_batch_size)
    _positive("train.micro_batch_size", t.micro_batch_size)
    _positive("train.eval_batch_size", t.eval_batch_size)
    _positive("train.threads", t.threads)
    _positive("train.checkpoint_every_epochs", t.checkpoint_every_epochs)
    _positive("train.log_every_steps", t.log_every_steps)
    _positive("train.eval_every_steps", t.eval_every_steps)
    _choice("train.compile_mode", t.compile_mode, COMPILE_MODES)
    if not DEVICE_PATTERN.fullmatch(t.device):
        raise ConfigError(
            f"train.device: '{t.device}' is not one of: auto, cpu, cuda, cuda:N (N = 0, 1, ...), "
            "mps"
        )
    _choice("train.amp", t.amp, AMP_MODES)
    _check_trackers(t.trackers)
    _check_loss_and_plugins(t)
    if t.micro_batch_size is not None and t.micro_batch_size > t.global_batch_size:
        raise ConfigError(
            f"train.micro_batch_size ({t.micro_batch_size}) is larger than "
            f"train.global_batch_size ({t.global_batch_size}); make it a divisor of it"
        )
    _choice("optim.name", o.name, OPTIMIZERS)
    _positive("optim.lr", o.lr)
    _positive("optim.base_batch_size", o.base_batch_size)
    _choice("optim.scaling", o.scaling, SCALING_RULES)
    if not 0.0 <= o.momentum < 1.0:
        raise ConfigError(f"optim.momentum: must be in [0, 1), got {o.momentum}")
    if o.nesterov and o.momentum == 0:
        raise ConfigError("optim.nesterov: needs optim.momentum > 0")
    _positive("optim.weight_decay", o.weight_decay, allow_zero=True)
    _positive("optim.warmup_epochs", o.warmup_epochs, allow_zero=True)
    _check_warmup_fits(t, o)
    if not 0.0 <= o.warmup_start_factor <= 1.0:
        raise ConfigError(
            f"optim.warmup_start_factor: must be in [0, 1], got {o.warmup_start_factor}"
        )
    _choice("optim.schedule", o.schedule, SCHEDULES)
    if o.schedule == "multistep" and not o.milestones:
        raise ConfigError("optim.milestones: the multistep schedule needs epochs, e.g. [30, 60]")
    if any(b <= a for a, b in zip(o.milestones, o.milestones[1:], strict=False)):
        raise ConfigError(f"optim.milestones: must increase, got {o.milestones}")
    if o.decay_factor is not None and not 0.0 < o.decay_factor <= 1.0:
        raise ConfigError(f"optim.decay_factor: must be in (0, 1], got {o.decay_factor}")
    if not 0.0 <= o.min_lr_factor <= 1.0:
        raise ConfigError(f"optim.min_lr_factor: must be in [0, 1], got {o.min_lr_factor}")
    _positive("optim.trust_coefficient", o.trust_coefficient)
    _choice("optim.lars_form", o.lars_form, LARS_FORMS)
    _check_lars_keys(o)
    if o.name == "lars" and o.nesterov and o.lars_form == "larc":
        raise ConfigError("optim.nesterov: the larc form has no Nesterov variant; use another form")
    _positive("optim.grad_clip_norm", o.grad_clip_norm)
    _positive("optim.grad_penalty", o.grad_penalty, allow_zero=True)
    _check_sharpness(t, o, n)
    _positive("train.swa_start_epoch", t.swa_start_epoch, allow_zero=True)
    _positive("train.swa_every_steps", t.swa_every_steps)
    if t.swa_start_epoch is not None and t.swa_start_epoch >= run_epochs(t, o):
        raise ConfigError(
            f"train.swa_start_epoch={t.swa_start_epoch:g} is not before the run's end "
            f"({run_epochs(t, o)} epochs): nothing would be averaged; start it earlier"
        )
    _positive("noise.alpha", n.alpha, allow_zero=True)
    _positive("noise.gamma", n.gamma, allow_zero=True)
    _choice("noise.placement", n.placement, NOISE_PLACEMENTS)
    _choice("noise.kind", n.kind, NOISE_KINDS)
    _choice("noise.match", n.match, NOISE_MATCHES)
    _positive("noise.scale", n.scale, allow_zero=True)
    if n.kind != "isotropic" and n.alpha > 0:
        raise ConfigError(
            f"noise.alpha is the isotropic kind's variance; with noise.kind={n.kind} the size "
            "comes from noise.match and noise.scale: set noise.alpha=0"
        )
    if n.kind != "isotropic" and n.gamma != NoiseConfig.gamma:
        raise ConfigError(
            f"noise.gamma={n.gamma:g} is the isotropic kind's decay and does nothing with "
            f"noise.kind={n.kind} (its size follows the measured gradient noise, noise.match "
            "and noise.scale): drop noise.gamma, or use noise.kind=isotropic with noise.alpha"
        )
    if n.kind == "isotropic" and n.match != NoiseConfig.match:
        raise ConfigError(
            f"noise.match={n.match} sizes the shaped kinds' noise and does nothing with "
            "noise.kind=isotropic (its size is noise.alpha / (1 + t)^noise.gamma): drop "
            "noise.match, or choose a shaped kind (noise.kind=microbatch, diagonal or "
            "multiplicative)"
        )
    if n.kind != "isotropic" and n.placement != "gradient":
        raise ConfigError(f"noise.placement=update is for the isotropic kind only, not {n.kind}")
    if n.kind == "isotropic" and n.scale != NoiseConfig.scale:
        raise ConfigError(
            f"noise.scale={n.scale:g} multiplies the shaped kinds' noise and does nothing with "
            "noise.kind=isotropic: use noise.alpha for the isotropic kind's size, or choose a "
            "shaped kind (noise.kind=microbatch, diagonal or multiplicative)"
        )


PLUGIN_PATTERN = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*)?")
"""``train.plugins`` entries: a module path, optionally ``:callable`` (as an entry point's)."""


def _check_loss_and_plugins(train: TrainConfig) -> None:
    """``train.plugins`` spellings, and label smoothing only with the loss it smooths. The loss
    name itself is the loss registry's (:func:`largebatch.losses.check_loss_name`)."""
    for entry in train.plugins:
        if not PLUGIN_PATTERN.fullmatch(entry):
            raise ConfigError(
                f"train.plugins: '{entry}' is not a module path; write e.g. my_plugin or "
                "my_package.plugin, optionally with :register (a function to call)"
            )
    if train.label_smoothing and train.loss != "cross_entropy":
        raise ConfigError(
            f"train.label_smoothing smooths cross-entropy and does nothing with "
            f"train.loss={train.loss}: set train.label_smoothing=0, or train.loss=cross_entropy"
        )


def _check_trackers(names: list[str]) -> None:
    for name in names:
        _choice("train.trackers", name, TRACKERS)
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"train.trackers: {', '.join(repeated)} given twice; list each once")


def _check_lars_keys(optim: OptimConfig) -> None:
    """The LARS keys do nothing under ``optim.name=sgd``: set them only with ``lars``."""
    if optim.name == "lars":
        return
    for key in ("lars_form", "trust_coefficient"):
        value, default = getattr(optim, key), getattr(OptimConfig, key)
        if value != default:
            raise ConfigError(
                f"optim.{key}={value} is a LARS setting and does nothing with "
                f"optim.name={optim.name}: set optim.name=lars, or leave optim.{key} at its "
                f"default ({default})"
            )


def _check_sharpness(train: TrainConfig, optim: OptimConfig, noise: NoiseConfig) -> None:
    """Label smoothing, the penalty's form and the sharpness-aware kinds: ranges, and every
    combination in which a key would do nothing or could not run."""
    if not 0.0 <= train.label_smoothing < 1.0:
        raise ConfigError(f"train.label_smoothing: must be in [0, 1), got {train.label_smoothing}")
    _choice("optim.grad_penalty_form", optim.grad_penalty_form, PENALTY_FORMS)
    _choice("optim.sam", optim.sam, SAM_KINDS)
    _positive("optim.sam_rho", optim.sam_rho)
    double_backward = optim.grad_penalty > 0 and optim.grad_penalty_form == "double_backward"
    if optim.grad_penalty == 0 and optim.grad_penalty_form != "double_backward":
        raise ConfigError(
            "optim.grad_penalty_form has no effect without optim.grad_penalty > 0; set both"
        )
    if double_backward and train.compile:
        raise ConfigError(
            "optim.grad_penalty with train.compile=true: torch.compile cannot run the double "
            "backward; set optim.grad_penalty_form=finite_difference (2 passes, same penalty to "
            "first order) or train.compile=false"
        )
    if optim.grad_penalty > 0 and not double_backward and noise.kind != "isotropic":
        raise ConfigError(
            f"noise.kind={noise.kind} draws from the micro-batches, which the finite-difference "
            "penalty passes over twice; use noise.kind=isotropic or "
            "optim.grad_penalty_form=double_backward"
        )
    if optim.sam == "none":
        if optim.sam_rho is not None or not optim.sam_normalize:
            key = "optim.sam_rho" if optim.sam_rho is not None else "optim.sam_normalize"
            raise ConfigError(f"{key} has no effect with optim.sam=none; choose optim.sam")
        return
    if optim.grad_penalty > 0:
        raise ConfigError(
            f"optim.sam={optim.sam} and optim.grad_penalty are two regularisers of the same "
            "gradient; use one (the penalty's finite-difference form is "
            "optim.sam=msam with optim.sam_normalize=false)"
        )
    if optim.sam == "momentum":
        if optim.momentum == 0:
            raise ConfigError(
                "optim.sam=momentum perturbs along the momentum buffer; set optim.momentum > 0"
            )
        if not optim.sam_normalize:
            raise ConfigError(
                "optim.sam_normalize=false is for sam and msam; Momentum-SAM's perturbation is "
                "always rho v/|v|"
            )
    elif noise.kind != "isotropic":
        raise ConfigError(
            f"noise.kind={noise.kind} draws from the micro-batches, which optim.sam={optim.sam} "
            "passes over twice; use noise.kind=isotropic or optim.sam=momentum"
        )


def sam_rho(optim: OptimConfig) -> float:
    """``optim.sam_rho``, or its kind's default when None."""
    if optim.sam_rho is not None:
        return optim.sam_rho
    return SAM_DEFAULT_RHO.get(optim.sam, 0.0)


def run_epochs(train: TrainConfig, optim: OptimConfig) -> int:
    """Epochs the run makes: ``train.epochs``, stretched by ``global_batch_size /
    base_batch_size`` under ``train.scale_epochs`` and rounded, as
    :func:`largebatch.optim.schedules.build_schedule` and the engine do."""
    if not train.scale_epochs:
        return train.epochs
    return round(train.epochs * train.global_batch_size / optim.base_batch_size)


def _check_warmup_fits(train: TrainConfig, optim: OptimConfig) -> None:
    """A warmup as long as the run or longer never reaches the learning rate that was asked for.

    Warmup is not stretched by ``train.scale_epochs`` (see ``build_schedule``), the run is: so
    the comparison is against :func:`run_epochs`.
    """
    if optim.warmup_epochs == 0:
        return
    epochs = run_epochs(train, optim)
    if optim.warmup_epochs < epochs:
        return
    if train.scale_epochs:
        scale = train.global_batch_size / optim.base_batch_size
        run = f"{epochs} epochs (train.epochs={train.epochs} x {scale:g} under train.scale_epochs)"
    else:
        run = f"{epochs} epochs (train.epochs)"
    raise ConfigError(
        f"optim.warmup_epochs ({optim.warmup_epochs}) is not shorter than the run, {run}: the "
        "learning rate would never reach its scaled value; shorten the warmup or train longer"
    )


def resolved(cfg: Config) -> Config:
    """A copy with every 'None means a default' value replaced by the value it means."""
    out = dataclasses.replace(
        cfg,
        optim=dataclasses.replace(cfg.optim),
        train=dataclasses.replace(cfg.train),
    )
    if out.optim.decay_factor is None:
        out.optim.decay_factor = 0.9 if out.optim.schedule == "paper" else 0.1
    return out
