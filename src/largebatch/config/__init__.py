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

The package, one concept per module: :mod:`~largebatch.config.sections` (the dataclasses),
:mod:`~largebatch.config.yaml_io` (YAML read with limits), :mod:`~largebatch.config.build`
(from YAML and overrides, types checked) and :mod:`~largebatch.config.checks` (ranges, names
and combinations). Every public name is importable from ``largebatch.config``.
"""

from largebatch.config.build import (  # noqa: F401
    MAPPING_KEYS,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
    normalise_yaml_floats,
    parse_override,
)
from largebatch.config.checks import (  # noqa: F401
    AMP_MODES,
    COMPILE_MODES,
    DEVICE_PATTERN,
    LARS_FORMS,
    NOISE_KINDS,
    NOISE_MATCHES,
    NOISE_PLACEMENTS,
    OPTIMIZERS,
    PENALTY_FORMS,
    PLUGIN_PATTERN,
    SAM_DEFAULT_RHO,
    SAM_KINDS,
    SCALING_RULES,
    SCHEDULES,
    TRACKERS,
    resolved,
    run_epochs,
    sam_rho,
    validate,
)
from largebatch.config.sections import (  # noqa: F401
    SECTIONS,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    NoiseConfig,
    OptimConfig,
    TrainConfig,
)
from largebatch.config.yaml_io import (  # noqa: F401
    YAML_MAX_BYTES,
    YAML_MAX_NODES,
    YamlTooLarge,
    describe_yaml_error,
    load_yaml_text,
    read_user_yaml,
    read_yaml_file,
)

__all__ = [
    "AMP_MODES",
    "COMPILE_MODES",
    "Config",
    "ConfigError",
    "DEVICE_PATTERN",
    "DataConfig",
    "LARS_FORMS",
    "MAPPING_KEYS",
    "ModelConfig",
    "NOISE_KINDS",
    "NOISE_MATCHES",
    "NOISE_PLACEMENTS",
    "NoiseConfig",
    "OPTIMIZERS",
    "OptimConfig",
    "PENALTY_FORMS",
    "PLUGIN_PATTERN",
    "SAM_DEFAULT_RHO",
    "SAM_KINDS",
    "SCALING_RULES",
    "SCHEDULES",
    "SECTIONS",
    "TRACKERS",
    "TrainConfig",
    "YAML_MAX_BYTES",
    "YAML_MAX_NODES",
    "YamlTooLarge",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "describe_yaml_error",
    "dump_config",
    "load_config",
    "load_yaml_text",
    "normalise_yaml_floats",
    "parse_override",
    "read_user_yaml",
    "read_yaml_file",
    "resolved",
    "run_epochs",
    "sam_rho",
    "validate",
]
