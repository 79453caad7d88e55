"""The config's five sections (``data``, ``model``, ``train``, ``optim``, ``noise``), one
dataclass each; every key's docstring says what it does, in what units.

    >>> Config().train.global_batch_size > 0
    True
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from largebatch.errors import UserError


class ConfigError(UserError):
    """A user mistake in a config file or an override; the message names the key and the fix."""


ConfigError.__module__ = "largebatch.config"  # where users import it from, and what it prints


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
    args: dict[str, Any] = field(default_factory=dict)
    """A plugin model's own constructor arguments (``model.args.depth=3``), checked against its
    builder's signature by the model registry; the built-in models take none (their settings
    are the keys above)."""


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
    trackers: list[str] = field(default_factory=list)
    """Experiment trackers that get a copy of the records (rank 0): the resolved config as
    hyperparameters, the ``steps.jsonl``, ``metrics.jsonl`` and ``evals.jsonl`` numbers. Any of
    ``tensorboard`` (``RUN/tensorboard/``), ``csv`` (``RUN/csv/``, no dependency), ``wandb``
    (offline in ``RUN/wandb/`` unless ``WANDB_MODE`` is set) and ``mlflow`` (file store
    ``RUN/mlruns/`` unless ``MLFLOW_TRACKING_URI`` is set), e.g. ``[csv, wandb]``; each but csv
    needs its extra (``pip install 'largebatch[wandb]'``). See
    :mod:`largebatch.engine.trackers`."""
    tensorboard: bool = False
    """Alias: true adds ``tensorboard`` to ``train.trackers`` (event files in
    ``RUN/tensorboard/``, rank 0). Needs the ``tensorboard`` package
    (``pip install tensorboard``, or the ``largebatch[tensorboard]`` extra)."""
    loss: str = "cross_entropy"
    """The per-example training loss (:mod:`largebatch.losses`): ``cross_entropy`` (with
    ``label_smoothing``) or a plugin's; ``largebatch list`` shows the names."""
    plugins: list[str] = field(default_factory=list)
    """Modules imported before the config's names are checked (``pkg.module`` or
    ``pkg.module:register``; see :mod:`largebatch.plugins`); recorded in ``config.yaml``, so
    ``--resume``, ``analyze`` and sweep children import them too."""


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
