"""Typed, validated run configuration.

- `models`: the RunConfig tree (one model per section) and its cross-field checks;
- `loading`: presets (`presets/*.yaml`), YAML files, `key=value` overrides,
  `load_config` / `validate_config` / `dump_config` and the `ConfigError` they raise;
- `judge`: the LLM judge's settings (`JudgeConfig`).

`Method` and the method table live in `alt_core.methods`; they are re-exported here.
"""

from alt_core.config.judge import JudgeConfig, JudgeConfigError
from alt_core.config.loading import (
    PRESET_DIR,
    ConfigError,
    apply_overrides,
    check_config_files,
    dump_config,
    format_validation_error,
    list_presets,
    load_config,
    parse_override,
    validate_config,
)
from alt_core.config.models import (
    REWARD_PROVIDERS,
    TEMPLATE_PARSER,
    TEXT_PROVIDERS,
    DataConfig,
    DatapoolConfig,
    Dtype,
    EvaluationConfig,
    FeedbackConfig,
    ModelConfig,
    Provider,
    RuleCriticConfig,
    RunConfig,
    SamplingConfig,
    StorageConfig,
    StrictModel,
    TrainingConfig,
)
from alt_core.methods import JUDGE_METHODS, REWARD_METHODS, Method

__all__ = [
    "JUDGE_METHODS",
    "PRESET_DIR",
    "REWARD_METHODS",
    "REWARD_PROVIDERS",
    "TEMPLATE_PARSER",
    "TEXT_PROVIDERS",
    "ConfigError",
    "DataConfig",
    "DatapoolConfig",
    "Dtype",
    "EvaluationConfig",
    "FeedbackConfig",
    "JudgeConfig",
    "JudgeConfigError",
    "Method",
    "ModelConfig",
    "Provider",
    "RuleCriticConfig",
    "RunConfig",
    "SamplingConfig",
    "StorageConfig",
    "StrictModel",
    "TrainingConfig",
    "apply_overrides",
    "check_config_files",
    "dump_config",
    "format_validation_error",
    "list_presets",
    "load_config",
    "parse_override",
    "validate_config",
]
