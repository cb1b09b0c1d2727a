"""One validated config tree from a LLaMA-Factory-style YAML plus `KEY=VALUE` overrides.

The YAML is flat, as LLaMA-Factory users write it (`model_name_or_path`, `pref_beta`, `learning_rate`, ...);
only `ray:` is a nested section. The package is split by concern:

- `schema.py`: the dataclasses (every key, its type, default and doc); add a key there.
- `coerce.py`: checking a raw value against a field's type.
- `lf_compat.py`: LLaMA-Factory keys transformers 5 dropped or renamed, and LF-only stages.
- `parsing.py`: YAML + overrides -> `TrainConfig` (`load_config`).
- `validation.py`: range and combination checks, all run at parse time.
- `driver_checks.py`: the same checks in a Ray driver, without importing PEFT or transformers' model code.
- `resume.py`: the checkpoint `resume_from_checkpoint` names (markers and lookup: `trainer/checkpoints.py`).
"""

from trainer.config.coerce import as_list, coerce
from trainer.config.lf_compat import (
    FORCED_TRAINING_KEYS,
    IGNORED_LEGACY_KEYS,
    LEGACY_FLAGS,
    LEGACY_KEYS,
    LF_ONLY_STAGES,
)
from trainer.config.parsing import (
    apply_overrides,
    load_config,
    parse_override,
    read_yaml,
    training_fields,
    valid_keys,
    with_overrides,
)
from trainer.config.resume import resolve_resume
from trainer.config.schema import (
    FINETUNING_TYPES,
    GROUPS,
    REF_CACHE_NAME,
    RESOLVED_CONFIG_NAME,
    SUPPORTED_STAGES,
    DataArguments,
    FinetuningArguments,
    ModelArguments,
    RayArguments,
    TrainConfig,
    field_docs,
)
from trainer.errors import ConfigError

__all__ = [
    "FINETUNING_TYPES",
    "FORCED_TRAINING_KEYS",
    "GROUPS",
    "IGNORED_LEGACY_KEYS",
    "LEGACY_FLAGS",
    "LEGACY_KEYS",
    "LF_ONLY_STAGES",
    "REF_CACHE_NAME",
    "RESOLVED_CONFIG_NAME",
    "SUPPORTED_STAGES",
    "ConfigError",
    "DataArguments",
    "FinetuningArguments",
    "ModelArguments",
    "RayArguments",
    "TrainConfig",
    "apply_overrides",
    "as_list",
    "coerce",
    "field_docs",
    "load_config",
    "parse_override",
    "read_yaml",
    "resolve_resume",
    "training_fields",
    "valid_keys",
    "with_overrides",
]
