"""Typed run configuration: dataclasses loaded from YAML, overridden from the CLI, validated.

A config has five sections, each a dataclass: ``data``, ``model``, ``train``, ``optim`` and
``noise``. Every key has a type; an unknown key, a value of the wrong type or a value out of range
raises :class:`ConfigError`, whose message names the key and what it accepts. Nothing fails open:
keys are never dropped and names are never guessed.

The learning rate is always given with the batch it belongs to: ``optim.lr`` is the learning rate
at ``optim.base_batch_size`` examples per update, and ``optim.scaling`` names the rule that carries
it to ``train.global_batch_size`` (see :mod:`largebatch.optim.scaling`).

Example::

    cfg = load_config("configs/mnist1d_cnn.yaml", ["train.global_batch_size=1024", "optim.lr=0.05"])
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from largebatch.errors import UserError


class ConfigError(UserError):
    """A user mistake in a config file or an override; the message names the key and the fix."""


# ----------------------------------------------------------------------------------------------
# Sections


@dataclass
class DataConfig:
    name: str = "mnist1d"
    """Dataset name; see ``largebatch list`` for the registry."""
    root: str | None = None
    """Where the dataset's files are (IDX files, archives, image folders). None: the defaults."""
    num_samples: int = 5000
    """MNIST-1D only: examples generated in all (train + validation)."""
    train_fraction: float = 0.8
    """MNIST-1D only: fraction of the generated examples used for training (the package's split)."""
    train_subset: int | None = None
    """Keep only this many training examples (a stratified-by-seed random subset). None: all."""
    val_subset: int | None = None
    """Evaluate on only this many validation examples (a stratified subset drawn with
    ``split_seed``, the same for every run): cheaper per-epoch evaluation on a large validation
    set. Datasets held in memory only (mnist1d, fashion_mnist, mnist, cifar10/100). None: all."""
    augment: bool = False
    """Random training augmentation where the dataset defines one (images)."""
    image_size: int = 224
    """Image datasets: side of the square training crop in pixels."""
    val_fraction: float = 0.25
    """Datasets without an official validation split (Caltech101): fraction held out, stratified."""
    split_seed: int = 0
    """Seed of the train/validation split where the toolkit makes it."""
    keep_background: bool = False
    """Caltech101: keep the ``BACKGROUND_Google`` class (left out by default, as is usual)."""
    skip_corrupt: bool = False
    """Image datasets: skip (and count) unreadable images instead of stopping with an error."""
    num_workers: int = 0
    """DataLoader workers for datasets decoded from disk."""
    cache_dir: str | None = None
    """Where the decode cache lives. None: ``~/.cache/largebatch``."""


@dataclass
class ModelConfig:
    name: str = "mlp"
    """Model name; see ``largebatch list`` for the registry."""
    hidden: list[int] = field(default_factory=lambda: [256, 256])
    """MLP: widths of the hidden layers."""
    channels: int = 32
    """CNNs: channels of the first convolution (later stages scale from it)."""
    batchnorm: bool = True
    """CNNs: BatchNorm after each convolution."""
    dropout: float = 0.0
    """Dropout probability before the classifier (0 = none)."""
    ghost_batch_size: int | None = None
    """Ghost BatchNorm (Hoffer et al.): normalise over chunks of this many examples. None: off."""
    sync_batchnorm: bool = False
    """Under DDP, synchronise BatchNorm statistics across ranks (default: per-replica)."""


@dataclass
class TrainConfig:
    epochs: int = 10
    global_batch_size: int = 128
    """Examples per optimizer update, summed over all ranks and accumulation steps."""
    micro_batch_size: int | None = None
    """Examples per forward/backward on one device. None: the whole per-device batch (no
    accumulation). Accumulation steps = per-device batch / micro batch."""
    seed: int = 0
    """Seeds model initialisation, data order and augmentation."""
    scale_epochs: bool = False
    """"Train longer" (Hoffer et al.'s regime adaptation): multiply ``epochs`` and the schedule's
    milestones by ``global_batch_size / optim.base_batch_size``, so a large batch makes as many
    updates as the base batch does."""
    drop_last: bool = True
    """Drop the last partial batch of each epoch (True), or train on it as a smaller update (False;
    its loss is still the mean over its own examples)."""
    eval_batch_size: int = 2048
    eval_train: bool = True
    """Measure loss/accuracy on the whole training set in eval mode every epoch."""
    device: str = "auto"
    """``auto`` (CUDA if available, else CPU), ``cpu`` or ``cuda``/``cuda:N``."""
    threads: int | None = None
    """torch intra-op threads on CPU. None: torch's default."""
    amp: str = "none"
    """``none`` or ``bf16`` (autocast on CUDA; on CPU it is allowed but slow)."""
    channels_last: bool = False
    compile: bool = False
    """Wrap the model in ``torch.compile``."""
    compile_mode: str = "default"
    """``torch.compile`` mode: default | reduce-overhead (CUDA graphs, for small models on a GPU)
    | max-autotune."""
    log_every_steps: int = 50
    """Read the training loss back from the device every N updates (and at each epoch's end):
    one line of ``steps.jsonl``. A non-finite loss is noticed at the next read (at most N
    updates late; the update it happened at is recorded)."""
    eval_every_steps: int | None = None
    """Also measure validation loss/accuracy every N updates (``evals.jsonl``): the resolution
    that steps-to-target plots need. None: only at each epoch's end."""
    swa_start_epoch: float | None = None
    """Stochastic weight averaging (Izmailov et al. 2018; SWAP, Gupta et al. 2020): from this
    epoch on, average the weights every ``swa_every_steps`` updates; the averaged model (its
    BatchNorm statistics recomputed on the training set) is what is evaluated, reported in
    ``metrics.jsonl`` and saved as ``swa_model`` in the checkpoint. None: off."""
    swa_every_steps: int | None = None
    """SWA: updates between averagings. None: once per epoch, at its end."""
    label_smoothing: float = 0.0
    """Label smoothing ``eps`` of the training loss: cross-entropy against ``(1 - eps) onehot(y)
    + eps / C``. Evaluation (``metrics.jsonl`` losses) stays plain cross-entropy, so losses
    compare across runs with and without it; ``steps.jsonl`` records the smoothed objective."""
    checkpoint_every_epochs: int = 1
    """Write ``checkpoints/last.pt`` every N epochs (and always at the end)."""
    progress: bool | None = None
    """Show a progress bar. None: only when stderr is a terminal."""
    tensorboard: bool = False
    """Also write the ``steps.jsonl`` and ``metrics.jsonl`` scalars as TensorBoard event files in
    ``RUN/tensorboard/`` (rank 0). Needs the ``tensorboard`` package
    (``pip install tensorboard``, or the ``largebatch[tensorboard]`` extra)."""


@dataclass
class OptimConfig:
    name: str = "sgd"
    """``sgd`` (with momentum / Nesterov) or ``lars`` (You et al.'s layer-wise trust ratio)."""
    lr: float = 0.1
    """Base learning rate: the one that belongs to ``base_batch_size``."""
    base_batch_size: int = 128
    """The batch that ``lr`` belongs to."""
    scaling: str = "linear"
    """Rule from ``base_batch_size`` to ``train.global_batch_size``: none | linear | sqrt."""
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    """Coupled L2 weight decay, added to the gradient inside the optimizer."""
    decay_bias_and_norm: bool = True
    """Apply weight decay to biases and normalisation parameters too (False: only weights)."""
    warmup_epochs: float = 0.0
    """Gradual warmup (Goyal et al.): linear from ``warmup_start_factor * lr`` to the scaled lr."""
    warmup_start_factor: float = 0.0
    schedule: str = "constant"
    """constant | multistep | paper | cosine (see :mod:`largebatch.optim.schedules`)."""
    milestones: list[float] = field(default_factory=list)
    """multistep: epochs at which the LR is multiplied by ``decay_factor``."""
    decay_factor: float | None = None
    """Multiplier at each decay. None: 0.1 for multistep, 0.9 for paper (the text's "by 10%")."""
    min_lr_factor: float = 0.0
    """cosine: final LR as a fraction of the peak."""
    trust_coefficient: float = 0.001
    """lars: eta, the trust coefficient (under ``sgd`` it must stay at its default)."""
    lars_form: str = "you2017"
    """lars: which published form (:data:`largebatch.optim.LARS_FORMS`): ``you2017`` (You et al.
    2017, LR inside momentum), ``optax``, ``timm`` (LR outside momentum) or ``larc`` (apex,
    clipped). The forms differ under warmup and decay, not at a constant LR."""
    grad_clip_norm: float | None = None
    """Clip the global gradient norm to this value before the noise is added. None: off."""
    grad_penalty: float = 0.0
    """lambda of the micro-batch gradient-norm penalty (Smith et al. 2021, Geiping et al. 2022):
    each update minimises ``L + lambda/(4k) sum_j |grad L_j|^2`` over its ``k`` micro-batches
    (``train.micro_batch_size``), SGD's implicit regulariser at that batch made explicit, by a
    double backward or a finite difference (``grad_penalty_form``). 0: off."""
    grad_penalty_form: str = "double_backward"
    """How the penalty's gradient is made: ``double_backward`` (exact; about 2-3x an update; one
    process, no ``torch.compile``) or ``finite_difference`` (``grad L_j(theta + (lambda/2)
    grad L_j)``, exact to first order in lambda: 2 forward-backward passes, no double backward,
    so it runs under DDP and ``torch.compile``)."""
    sam: str = "none"
    """Sharpness-aware gradient (:mod:`largebatch.optim.sam`): ``none``; ``sam`` (Foret et al.
    2021: the gradient at ``theta + rho g/|g|``, ``g`` this rank's batch gradient; 2 passes);
    ``msam`` (m-sharpness: each micro-batch, ``train.micro_batch_size``, perturbed by its own
    gradient; 2 passes); ``momentum`` (Momentum-SAM, Becker et al. 2024: the gradient at
    ``theta - rho v/|v|``, ``v`` the momentum buffer; no extra pass)."""
    sam_rho: float | None = None
    """The perturbation's radius. None: 0.05 for sam and msam, 0.3 for momentum (the papers'
    defaults for SGD); the unnormalised form's ``r`` is in weight units per gradient unit."""
    sam_normalize: bool = True
    """sam / msam: ``e = rho g/|g|`` (True) or ``e = rho g`` (False: the finite difference of the
    gradient-norm penalty with ``lambda = 2 rho``)."""


@dataclass
class NoiseConfig:
    kind: str = "isotropic"
    """``isotropic`` (the paper: ``N(0, sigma_t^2 I)``, on when ``alpha > 0``), or noise shaped
    like SGD's own, covariance ``c * Sigma`` with ``c`` from ``match`` and ``scale``:
    ``microbatch`` (the span of the micro-batch deviations), ``diagonal`` (``N(0, c diag Sigma)``,
    a running estimate), ``multiplicative`` (per-example loss weights ``w_i ~ N(1, s^2)``)."""
    match: str = "epoch"
    """Shaped kinds: ``epoch`` (the per-epoch noise of the reference run ``(optim.lr,
    optim.base_batch_size)`` at this run's learning rate: zero under linear scaling) or
    ``step`` (each update as noisy as a reference update: ``c = 1/B_S - 1/B_L``)."""
    scale: float = 1.0
    """Shaped kinds: multiplies ``c`` (0 = off). With ``isotropic`` it must stay 1 (the
    isotropic size is ``alpha``)."""
    alpha: float = 0.0
    """Isotropic kind: variance of the gradient noise at t = 0 (0 = off). The paper uses 1e-5."""
    gamma: float = 0.55
    """Decay exponent: sigma_t^2 = alpha / (1 + t)^gamma."""
    seed: int = 0
    """Seed of the noise generator (identical on every rank)."""
    placement: str = "gradient"
    """``gradient``: added to the averaged gradient before weight decay and momentum (the paper);
    ``update``: added to the update after momentum, so momentum does not accumulate it."""
    include_bias_and_norm: bool = True
    """Add noise to biases and normalisation parameters too (False: only weights)."""


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)


SECTIONS = tuple(f.name for f in dataclasses.fields(Config))

# ----------------------------------------------------------------------------------------------
# Building from plain dicts, with types checked


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to floats).

    NaN and infinities are refused wherever they appear: a ``nan`` learning rate or noise
    variance would otherwise pass every range check (comparisons with NaN are all false).
    """
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: must be a finite number, got {value}")
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list of {_type_name(item_tp)}, got {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise AssertionError(f"unsupported annotation {tp!r} for {key}")


def _section_from_dict(cls: type, values: dict[str, Any], section: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            raise ConfigError(
                f"unknown key '{section}.{key}'; valid keys in '{section}': {', '.join(names)}"
            )
        kwargs[key] = _coerce(value, hints[key], f"{section}.{key}")
    return cls(**kwargs)


def config_from_dict(raw: dict[str, Any] | None) -> Config:
    """Build a :class:`Config` from nested dicts, checking every key and type (not ranges)."""
    raw = raw or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of sections ({', '.join(SECTIONS)})")
    sections = {}
    hints = typing.get_type_hints(Config)
    for name, values in raw.items():
        if name not in hints:
            raise ConfigError(f"unknown section '{name}'; valid sections: {', '.join(SECTIONS)}")
        if values is None:
            values = {}
        if not isinstance(values, dict):
            raise ConfigError(f"section '{name}' must be a mapping of keys, got {values!r}")
        sections[name] = _section_from_dict(hints[name], values, name)
    return Config(**sections)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


YAML_MAX_BYTES = 4 * 1024 * 1024
"""The largest YAML file (config, sweep spec, run config) read: real ones are a few kB."""
YAML_MAX_NODES = 100_000
"""The most nodes a YAML document may hold once its aliases are expanded: a few hundred bytes of
nested aliases (a "billion laughs") otherwise expand to billions of values downstream."""


class YamlTooLarge(ValueError):
    """A YAML document beyond :data:`YAML_MAX_BYTES` or :data:`YAML_MAX_NODES`."""


def _expanded_nodes(root: yaml.Node) -> int:
    """How many nodes ``root`` holds with every alias expanded (each alias counts its whole
    target again); stops at :data:`YAML_MAX_NODES` and refuses an alias that contains itself."""
    sizes: dict[int, int] = {}
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        if isinstance(node, yaml.ScalarNode):
            sizes[key] = 1
            continue
        children: list[yaml.Node] = (
            [n for pair in node.value for n in pair]
            if isinstance(node, yaml.MappingNode)
            else list(node.value)
        )
        if done:
            open_.discard(key)
            sizes[key] = min(1 + sum(sizes[id(c)] for c in children), YAML_MAX_NODES + 1)
            continue
        if key in open_:
            raise YamlTooLarge("an alias refers to a collection that contains it (a cycle)")
        open_.add(key)
        stack.append((node, True))
        for child in children:
            if id(child) in open_:
                raise YamlTooLarge("an alias refers to a collection that contains it (a cycle)")
            if id(child) not in sizes:
                stack.append((child, False))
    total = sizes[id(root)]
    if total > YAML_MAX_NODES:
        raise YamlTooLarge(
            f"its aliases (*name) expand to more than {YAML_MAX_NODES} values (an alias bomb?)"
        )
    return total


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no ``!!python/`` tags) that refuses a document whose aliases expand
    beyond :data:`YAML_MAX_NODES` before anything is constructed from it."""

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        if node is not None:
            _expanded_nodes(node)
        return node


def load_yaml_text(text: str | bytes) -> Any:
    """The one YAML reader of config files, ``KEY=VALUE`` override values, sweep specs and run
    configs: safe (no ``!!python/`` tags), at most :data:`YAML_MAX_BYTES`, and refusing an alias
    bomb or a nesting too deep for the parser. Raises ``yaml.YAMLError`` (bad YAML) or
    :class:`YamlTooLarge` (the limits); callers turn both into one :class:`UserError`."""
    if len(text) > YAML_MAX_BYTES:
        raise YamlTooLarge(
            f"it is {len(text)} bytes; the limit is {YAML_MAX_BYTES} (a config is a few kB)"
        )
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader)
    except RecursionError:
        raise YamlTooLarge("it nests too deeply to read") from None


def read_yaml_file(path: str | Path) -> Any:
    """:func:`load_yaml_text` of a file, checking its size before reading it."""
    path = Path(path)
    size = path.stat().st_size
    if size > YAML_MAX_BYTES:
        raise YamlTooLarge(
            f"it is {size} bytes; the limit is {YAML_MAX_BYTES} (a config is a few kB)"
        )
    with open(path, encoding="utf-8") as f:
        return load_yaml_text(f.read())


def parse_override(text: str) -> tuple[str, str, Any]:
    """``'train.global_batch_size=1024'`` -> ``('train', 'global_batch_size', 1024)``.

    The value is parsed as YAML, so ``[256,256]``, ``true``, ``null`` and ``1e-5`` work.
    """
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    dotted, raw_value = text.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(
            f"override key '{dotted}' must be section.key, section one of {', '.join(SECTIONS)}"
        )
    try:
        value = load_yaml_text(raw_value) if raw_value.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': value does not parse ({e})") from None
    except YamlTooLarge as e:
        raise ConfigError(
            f"override '{dotted.strip()}=...': value refused: {e}; give a plain value"
        ) from None
    # YAML 1.1 reads '1e-5' as a string; accept it as the number a user means.
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    return parts[0], parts[1], value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    raw = {k: dict(v or {}) for k, v in (raw or {}).items()}
    for text in overrides:
        section, key, value = parse_override(text)
        raw.setdefault(section, {})[key] = value
    return raw


def _load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist (presets are in configs/)")
    try:
        raw = read_yaml_file(path)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{path}' is not valid YAML: {e}") from None
    except YamlTooLarge as e:
        raise ConfigError(
            f"config file '{path}' refused: {e}; write the values out plainly"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"config file '{path}' cannot be read ({type(e).__name__}: {e})"
        ) from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of sections")
    return raw or {}


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None), apply overrides, validate."""
    raw = _load_yaml(path) if path is not None else {}
    raw = normalise_yaml_floats(raw)
    cfg = config_from_dict(apply_overrides(raw, overrides or []))
    validate(cfg)
    return cfg


def normalise_yaml_floats(raw: Any) -> Any:
    """YAML 1.1 (PyYAML) reads ``1e-5`` as a string; turn such strings into floats."""
    if isinstance(raw, dict):
        return {k: normalise_yaml_floats(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [normalise_yaml_floats(v) for v in raw]
    if isinstance(raw, str):
        try:
            return float(raw)
        except ValueError:
            return raw
    return raw


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


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
