"""What a training job is given (`TrainSpec`) and what it raises (`TrainingError`)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from alt_core.config import TrainingConfig

STATE_DIR_SUFFIX = ".state"


class TrainingError(RuntimeError):
    """Training failed; the message names the cause and what to change."""


class TrainSpec(BaseModel):
    """Everything one training run needs; serialised to JSON for the worker process."""

    model_config = ConfigDict(extra="forbid")

    policy_path: str = Field(description="Local checkpoint folder of the policy to train.")
    reference_path: str | None = Field(
        None, description="Frozen reference model (the initial SFT model); needed when kl_coef > 0."
    )
    train_table: str = Field(description="Committed training Parquet (local path or fsspec URI).")
    output_dir: str = Field(description="Local folder for the trained checkpoint and metrics.")
    training: TrainingConfig = Field(
        default_factory=TrainingConfig, description="The run config's training section."
    )
    added_tokens: list[str] = Field(
        default_factory=list, description="Tokens to add to the tokenizer (Quark control tokens)."
    )
    seed: int = Field(0, description="Seeds the data order and dropout.")
    run_name: str = Field(
        "alt",
        pattern=r"^[\w.-]+$",
        description=(
            "Name of this training in the experiment trackers of training.report_to: the "
            "TensorBoard folder under `<output_dir>/trackers`, the W&B project, the MLflow "
            "experiment. Letters, digits, '_', '.' and '-' only: it becomes a folder name."
        ),
    )
    state_dir: str | None = Field(
        None,
        description=(
            "Local folder for the resumable training state (None: `<output_dir>.state`, beside "
            "the output folder, so clearing the output keeps it). A run restarted with the same "
            "spec continues from the newest complete checkpoint in it."
        ),
    )
    state_uri: str | None = Field(
        None,
        description=(
            "Run-store folder (fsspec URI, such as s3://bucket/run/iter_001/policy.state) that "
            "every saved checkpoint is copied to, keeping the newest keep_checkpoints. A "
            "training restarted on another machine, or after its local state folder was "
            "lost, fetches the newest copy from there. None: the local state folder only."
        ),
    )
    checkpoint_every: int = Field(
        50,
        ge=0,
        description="Save the full training state every N optimizer steps (0: only at the end).",
    )
    keep_checkpoints: int = Field(
        2, gt=0, description="How many of the newest training-state checkpoints to keep."
    )

    @model_validator(mode="after")
    def _check_reference(self) -> TrainSpec:
        if self.training.kl_coef > 0 and not self.reference_path:
            raise ValueError(
                "training.kl_coef > 0 needs reference_path (the initial SFT model); "
                "set it or set training.kl_coef=0"
            )
        return self

    @property
    def resolved_state_dir(self) -> Path:
        """Where the training state lives: `state_dir`, else `<output_dir>.state`."""
        if self.state_dir:
            return Path(self.state_dir)
        return Path(self.output_dir.rstrip("/") + STATE_DIR_SUFFIX)

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str) -> TrainSpec:
        return cls.model_validate_json(text)
