"""Typed, validated run configuration.

- `models`: the RunConfig tree (one model per section) and its cross-field checks;
- `loading`: presets (`presets/*.yaml`), YAML files, `key=value` overrides,
  `load_config` / `validate_config` / `dump_config` and the `ConfigError` they raise;
  a run folder's config read back (`load_run_config`), a deployed flow's preset plus
  settings (`config_from_preset`), local paths made absolute (`absolute_paths`);
- `judge`: the LLM judge's settings (`JudgeConfig`).

`Method` and the method table live in `alt_core.methods`; they are re-exported here.
"""

from alt_core.config.judge import JudgeConfig, JudgeConfigError
from alt_core.config.loading import (
    PRESET_DIR,
    ConfigError,
    DuplicateKeyError,
    absolute_paths,
    absolute_uri,
    apply_overrides,
    check_config_files,
    config_from_preset,
    dump_config,
    format_validation_error,
    list_presets,
    load_config,
    load_run_config,
    load_yaml,
    parse_override,
    preset_path,
    read_config_text,
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
    RunSettings,
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
    "DuplicateKeyError",
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
    "RunSettings",
    "SamplingConfig",
    "StorageConfig",
    "StrictModel",
    "TrainingConfig",
    "absolute_paths",
    "absolute_uri",
    "apply_overrides",
    "check_config_files",
    "config_from_preset",
    "dump_config",
    "format_validation_error",
    "list_presets",
    "load_config",
    "load_run_config",
    "load_yaml",
    "parse_override",
    "preset_path",
    "read_config_text",
    "validate_config",
]
