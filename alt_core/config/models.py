"""The RunConfig tree: one pydantic model per config section, with its cross-field checks.

One model tree describes a whole run. The same models are the Prefect flow parameters,
so the UI form is typed and documented. Unknown keys are rejected, and the cross-field
rules run in `RunConfig`'s validator. Validators read no files: the checks that do (a
judge template must suit the method) run in `alt_core.config.loading.check_config_files`,
which `validate_config` and `load_config` call.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from alt_core.config.judge import JudgeConfig
from alt_core.methods import METHODS, FeedbackKind, Method, method_spec
from alt_core.methods import feedback_prefix as method_feedback_prefix


class StrictModel(BaseModel):
    # hide_input_in_errors: a ValidationError's text (which Prefect puts in a flow run's
    # state when it validates parameters) never echoes values. Pydantic applies the
    # setting of the outermost model only, so JudgeConfig's own flag does not protect it
    # once nested here. `format_validation_error` shows values, except under
    # feedback.judge, where an API key pasted into the wrong field would land.
    model_config = ConfigDict(
        extra="forbid",
        validate_assignment=True,
        use_enum_values=False,
        hide_input_in_errors=True,
    )


Dtype = Literal["auto", "float32", "float16", "bfloat16"]


class ModelConfig(StrictModel):
    policy: str = Field(
        "demo",
        description="Initial (SFT) policy: a Hugging Face hub name, a local or s3:// checkpoint "
        "folder, or 'demo' for the built-in tiny GPT-2 that is trained on first use.",
    )
    reference: str | None = Field(
        None, description="Frozen reference model for the KL term; defaults to the initial policy."
    )
    tokenizer: str | None = Field(None, description="Tokenizer to use; defaults to the policy's.")
    dtype: Dtype = Field(
        "auto",
        description="Weights dtype of the vLLM sampler. 'auto': the checkpoint's dtype on GPUs, "
        "fp32 on CPUs (the trainer's precision there; bfloat16 samples faster on CPUs with "
        "AVX512-BF16, see bench/bench_sampling.py --dtype).",
    )
    trust_remote_code: bool = Field(False, description="Allow custom model code from the hub.")


class DataConfig(StrictModel):
    source: Literal["demo", "file", "hf"] = Field(
        "demo",
        description="Where prompts come from: 'demo' (generated review prompts), 'file' (Parquet, "
        "JSONL or CSV files with a prompt column) or 'hf' (a datasets.load_dataset name).",
    )
    train_path: str | None = Field(None, description="Train prompt file (source='file').")
    valid_path: str | None = Field(None, description="Validation prompt file (source='file').")
    hf_dataset: str | None = Field(None, description="Dataset name or path (source='hf').")
    train_split: str = Field("train", description="Train split name (source='hf').")
    valid_split: str = Field("valid", description="Validation split name (source='hf').")
    prompt_column: str = Field("prompt", description="Column holding the prompt text.")
    prompt_format: Literal["text", "hh_dialogue"] = Field(
        "text",
        description="What the prompt column holds: 'text', the prompt itself; 'hh_dialogue', a "
        "whole Anthropic HH dialogue ('\\n\\nHuman: ... \\n\\nAssistant: ...', e.g. the "
        "'chosen' column of Anthropic/hh-rlhf), cut after its last '\\n\\nAssistant:' so "
        "that the policy writes the assistant's last reply.",
    )
    prompts_per_iteration: int = Field(
        2048, gt=0, description="Prompts drawn uniformly with replacement per iteration."
    )
    num_valid_prompts: int | None = Field(
        None, gt=0, description="Use only the first N validation prompts (None: all)."
    )
    max_prompt_tokens: int = Field(
        512, gt=0, description="Longer prompts are cut from the left to this many tokens."
    )
    demo_num_train: int = Field(4000, gt=0, description="Demo only: train prompts generated.")
    demo_num_valid: int = Field(128, gt=0, description="Demo only: validation prompts generated.")


class SamplingConfig(StrictModel):
    backend: Literal["vllm", "hf"] = Field(
        "vllm", description="Generation engine: vLLM (CPU or GPU build) or transformers' generate."
    )
    num_generations: int = Field(20, gt=0, description="Generations per prompt (train).")
    temperature: float = Field(0.9, ge=0, description="Sampling temperature (train).")
    top_p: float = Field(0.9, gt=0, le=1, description="Nucleus sampling mass (train).")
    max_new_tokens: int = Field(64, gt=0, description="Maximum generated tokens (train).")
    num_shards: int = Field(1, gt=0, description="Contiguous prompt shards, one engine each.")
    concurrency: int = Field(
        1, gt=0, description="Shards that run at once (GPU slots on GPUs, core groups on CPU)."
    )
    tensor_parallel_size: int = Field(1, gt=0, description="vLLM tensor parallel degree.")
    gpu_memory_utilization: float = Field(
        0.85, gt=0, le=1, description="vLLM's memory share for weights and KV cache on a GPU."
    )
    cpu_kvcache_gib: float = Field(
        1.0, gt=0, description="CPU build only: GiB of host memory for vLLM's KV cache."
    )
    enforce_eager: bool = Field(True, description="Skip CUDA-graph / torch.compile warm-up.")
    max_num_seqs: int = Field(256, gt=0, description="vLLM's cap on sequences in one batch.")


Provider = Literal["auto", "sentiment", "reward_model", "rule_critic", "judge"]
# Providers that give a scalar reward, and those that write textual feedback.
REWARD_PROVIDERS = ("sentiment", "reward_model")
TEXT_PROVIDERS = ("rule_critic", "judge")
PROVIDERS_OF_KIND = {FeedbackKind.REWARD: REWARD_PROVIDERS, FeedbackKind.TEXT: TEXT_PROVIDERS}
# What a method of each kind needs, and which providers give it (for the error message).
_NEEDS = {
    FeedbackKind.REWARD: ("a scalar reward", f"one of {sorted(REWARD_PROVIDERS)}"),
    FeedbackKind.TEXT: ("textual feedback", "'judge' or 'rule_critic'"),
}
# The judge-template parser each judge method needs (alt_core/feedback/judge/parsers.py).
TEMPLATE_PARSER = {m: s.judge_parser for m, s in METHODS.items() if s.judge_parser}


class RuleCriticConfig(StrictModel):
    categories: list[str] = Field(
        default_factory=lambda: ["Very positive", "Positive", "Neutral", "Negative"],
        min_length=4,
        max_length=4,
        description="ALT_LMC: names of the critic's four sentiment bands, best first (VADER "
        "compound of the continuation >= 0.5, >= 0.05, > -0.05, and below).",
    )
    attributes: tuple[str, str] = Field(
        ("positive", "fluent"),
        description="SteerLM: names of the critic's two attributes, sentiment 0..3 and fluency "
        "0..2, written as e.g. positive:3,fluent:2.",
    )

    @field_validator("categories")
    @classmethod
    def _distinct_categories(cls, value: list[str]) -> list[str]:
        if len({c.strip().lower() for c in value}) != len(value) or not all(
            c.strip() for c in value
        ):
            raise ValueError("categories must be non-empty and distinct (ignoring case)")
        return value

    @field_validator("attributes")
    @classmethod
    def _attribute_names(cls, value: tuple[str, str]) -> tuple[str, str]:
        if len(set(value)) != 2 or not all(re.fullmatch(r"[a-z][a-z0-9_]*", n) for n in value):
            raise ValueError("attributes must be two distinct lower-case words, e.g. positive")
        return value


class FeedbackConfig(StrictModel):
    provider: Provider = Field(
        "auto",
        description="Feedback source: 'sentiment' (VADER sentiment of the continuation, the demo "
        "reward), 'reward_model' (a scalar-head sequence classifier), 'rule_critic' (a "
        "rule-based STAND-IN for an LLM judge on the demo task: it writes critiques from a "
        "sentiment analysis, no language model involved), 'judge' (an OpenAI-compatible LLM, "
        "see feedback.judge) or 'auto': on the demo task, 'sentiment' for quark/alt_rm and "
        "'rule_critic' for alt_lmu/alt_lmc/steerlm; elsewhere 'reward_model' when "
        "feedback.reward_model is set, otherwise it must be named.",
    )
    reward_model: str | None = Field(None, description="Reward model name or path (reward_model).")
    batch_size: int = Field(32, gt=0, description="Reward model batch size.")
    max_length: int = Field(550, gt=0, description="Reward model input truncation, in tokens.")
    concurrency: int = Field(
        1, gt=0, description="Feedback shards (one per sampling shard) that run at once."
    )
    judge: JudgeConfig = Field(
        default_factory=JudgeConfig,
        description="The LLM judge (provider 'judge'): endpoint, model, prompt template (its "
        "parser must suit the method: lmu for alt_lmu, lmc for alt_lmc, steerlm for steerlm), "
        "concurrency, rate limits and retries. The API key is never set here.",
    )
    judge_cache: str | None = Field(
        None,
        description="Folder or s3:// URI where parsed judge answers are cached, keyed by judge "
        "model, template content and (prompt, generation). None: <storage.cache_dir>/"
        "judge-cache, shared by the runs that share a cache_dir.",
    )
    rule_critic: RuleCriticConfig = Field(
        default_factory=RuleCriticConfig,
        description="Labels of the rule-based critic (provider 'rule_critic', a stand-in for an "
        "LLM judge); its sentence and score rules are fixed (alt_core/tasks/demo/rule_critic.py).",
    )
    exemplar_rule: Literal["top_feedback", "fixed"] = Field(
        "top_feedback",
        description="Exemplar feedback that conditions sampling and validation from iteration 2 "
        "on. 'top_feedback': alt_lmu takes the feedback sentence written most often for the "
        "latest iteration's generations with the highest score any of them got (ties: the "
        "shortest, then the alphabetically first); alt_lmc the best category; steerlm every "
        "attribute at its best value. 'fixed': feedback.exemplar_text, every iteration.",
    )
    exemplar_text: str | None = Field(
        None, description="The exemplar when exemplar_rule is 'fixed'."
    )


class DatapoolConfig(StrictModel):
    drop_factor: float = Field(
        1.0, ge=0, le=1, description="Share of the pool flushed each iteration (1.0: empty it)."
    )
    num_quantiles: int = Field(5, gt=0, description="Reward quantiles per prompt (Quark, ALT_RM).")
    quantile_phrases: list[str] = Field(
        default_factory=lambda: ["Excellent.", "Good.", "Mediocre.", "Bad.", "Horrible."],
        description="ALT_RM: the feedback phrase of each quantile, best first.",
    )
    num_samples_per_quantile: int = Field(
        2, gt=0, description="Quark/ALT_RM: training samples drawn per prompt and quantile."
    )
    num_samples_per_prompt: int = Field(
        8, gt=0, description="ALT_LMU/LMC/SteerLM: samples per prompt, spread over buckets."
    )
    feedback_prefix: str | None = Field(
        None, description="Text before the feedback (default: '' for ALT_RM, 'feedback: ' else)."
    )
    prompt_prefix: str = Field(" input: ", description="Text between feedback and prompt.")


class TrainingConfig(StrictModel):
    learning_rate: float = Field(2e-5, gt=0, description="AdamW peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    epochs: int = Field(2, gt=0, description="Epochs over the training set per iteration.")
    per_device_batch_size: int = Field(8, gt=0, description="Sequences per device per step.")
    gradient_accumulation_steps: int = Field(1, gt=0, description="Micro-batches per update.")
    warmup_ratio: float = Field(0.05, ge=0, lt=1, description="Share of steps of linear warmup.")
    max_grad_norm: float | None = Field(1.0, gt=0, description="Gradient clipping (None: off).")
    kl_coef: float = Field(0.05, ge=0, description="beta: weight of KL(reference || policy).")
    entropy_coef: float = Field(0.06, ge=0, description="alpha: weight of the entropy bonus.")
    unfrozen_layers_ratio: float = Field(
        1.0, gt=0, le=1, description="Share of transformer blocks trained, counted from the top."
    )
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage.")
    offload_optimizer: bool = Field(False, description="DeepSpeed: optimizer state on the CPU.")
    mixed_precision: Literal["no", "fp16", "bf16"] = Field(
        "no", description="Mixed precision (GPU only; the CPU path trains in fp32)."
    )
    num_processes: int = Field(1, gt=0, description="Training processes (one per GPU).")
    max_seq_len: int = Field(1024, gt=0, description="Prompt plus response tokens, at most.")
    checkpoint_every: int = Field(
        50,
        ge=0,
        description="Save the full training state (weights, optimizer, LR schedule, RNG, data "
        "position) every N optimizer steps and after the last; a killed training resumes from "
        "the newest. 0: only at the end.",
    )
    keep_checkpoints: int = Field(
        2,
        gt=0,
        description="Newest training-state checkpoints kept (on local disk and, for an s3:// "
        "run folder, in the bucket).",
    )
    log_every: int = Field(
        10,
        gt=0,
        description="Print the step line (loss terms, lr, grad norm) every N optimizer steps, "
        "and for the first step of a start or resume and the last; every step is recorded "
        "in the policy's train_metrics.json and sent to the trackers regardless.",
    )
    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default_factory=list,
        description="Experiment trackers that receive the per-step loss terms through "
        "Accelerate (off by default). W&B and MLflow read WANDB_MODE / MLFLOW_TRACKING_URI "
        "from the environment; TensorBoard writes into the policy folder.",
    )


class EvaluationConfig(StrictModel):
    max_new_tokens: int | None = Field(
        None, gt=0, description="Greedy generation length (None: sampling.max_new_tokens)."
    )
    batch_size: int = Field(16, gt=0, description="Batch size for reference perplexity.")
    evaluate_initial: bool = Field(True, description="Also evaluate the initial policy.")


class StorageConfig(StrictModel):
    cache_dir: str = Field(
        "./runs/.cache",
        description="Store for reusable artifacts shared by runs (the built demo model).",
    )
    local_scratch: str | None = Field(
        None, description="Local folder for model copies pulled from object storage."
    )


class RunConfig(StrictModel):
    name: str = Field("alt-run", description="Run name, shown in Prefect and the report.")
    method: Method = Field(Method.ALT_RM, description=", ".join(m.value for m in Method) + ".")
    iterations: int = Field(3, gt=0, description="ALT iterations (K).")
    seed: int = Field(0, description="Base seed; each iteration and stage derives its own.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    datapool: DatapoolConfig = Field(default_factory=DatapoolConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)

    @model_validator(mode="after")
    def _check_cross_fields(self) -> RunConfig:
        self._resolve_feedback_provider()
        spec = method_spec(self.method)
        provider = self.feedback.provider
        if provider not in PROVIDERS_OF_KIND[spec.feedback]:
            needs, choose = _NEEDS[spec.feedback]
            raise ValueError(
                f"method {self.method.value} needs {needs}: set feedback.provider to "
                f"{choose} (got {provider!r})"
            )
        if (
            self.feedback.exemplar_rule == "fixed"
            and not (self.feedback.exemplar_text or "").strip()
        ):
            raise ValueError("feedback.exemplar_rule=fixed needs feedback.exemplar_text")
        if self.feedback.provider == "reward_model" and not self.feedback.reward_model:
            raise ValueError(
                "feedback.reward_model is required when feedback.provider=reward_model"
            )
        if spec.feedback_text == "quantile_phrase" and len(self.datapool.quantile_phrases) != (
            self.datapool.num_quantiles
        ):
            raise ValueError(
                f"datapool.quantile_phrases has {len(self.datapool.quantile_phrases)} phrases but "
                f"datapool.num_quantiles is {self.datapool.num_quantiles}: give one per quantile"
            )
        if self.sampling.num_shards > self.data.prompts_per_iteration:
            raise ValueError(
                f"sampling.num_shards ({self.sampling.num_shards}) is larger than "
                f"data.prompts_per_iteration ({self.data.prompts_per_iteration}): every shard "
                "needs at least one prompt; lower sampling.num_shards"
            )
        if self.data.source == "file" and not (self.data.train_path and self.data.valid_path):
            raise ValueError("data.source=file needs data.train_path and data.valid_path")
        if self.data.source == "hf" and not self.data.hf_dataset:
            raise ValueError("data.source=hf needs data.hf_dataset")
        if self.data.source == "demo" and self.model.policy != "demo":
            raise ValueError(
                "data.source=demo goes with model.policy=demo (the demo model knows the demo "
                "prompts); point data.source at your prompts to train another model"
            )
        return self

    def _resolve_feedback_provider(self) -> None:
        """feedback.provider=auto -> the provider the method and task call for. Resolved in
        place, so the recorded config, fingerprints and workers see the real provider."""
        if self.feedback.provider != "auto":
            return
        spec = method_spec(self.method)
        reward = spec.feedback is FeedbackKind.REWARD
        chosen: Provider
        if self.data.source == "demo":
            chosen = spec.demo_provider
        elif reward and self.feedback.reward_model:
            chosen = "reward_model"
        else:
            need = (
                "'reward_model' (with feedback.reward_model)"
                if reward
                else "'judge' (an LLM judge: feedback.judge.base_url, .model, .template)"
            )
            raise ValueError(
                f"feedback.provider=auto chooses a provider only for the demo task "
                f"(data.source=demo); for method {self.method.value} on your own data, set "
                f"feedback.provider to {need}"
            )
        self.feedback.provider = chosen

    def feedback_prefix(self) -> str:
        """datapool.feedback_prefix or the method's default (`alt_core.methods`)."""
        return method_feedback_prefix(self)
