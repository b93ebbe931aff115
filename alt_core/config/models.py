"""The RunConfig tree: one pydantic model per config section, with its cross-field checks.

One model tree describes a whole run. The same models are the Prefect flow parameters,
so the UI form is typed and documented (a deployed flow takes `RunSettings`, the same
fields without the cross-field rules, as settings over a preset). Unknown keys are
rejected, numbers must be finite and within their bounds, and the cross-field rules run
in `RunConfig`'s validator. Validators read no files: the checks that do (a judge
template must suit the method) run in `alt_core.config.loading.check_config_files`,
which `validate_config` and `load_config` call.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, field_validator, model_validator

from alt_core.config.judge import JudgeConfig
from alt_core.config.toxicity import ToxicityConfig
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
        # inf and nan are refused wherever a float is read (from YAML `.inf`, JSON, ...).
        allow_inf_nan=False,
    )


# A count: an integer, never a float or a bool (lax mode would read 2.0 or true as an
# int, and a JSON client's 1e18 as 10**18). Every count field also has an upper bound,
# far above any real run but low enough that a stray exponent or extra zeros is refused
# before it sizes a loop or an allocation.
Count = Annotated[int, Strict()]
MAX_TOKENS = 1 << 20  # token lengths
MAX_ROWS = 100_000_000  # prompts, generations, samples
MAX_BATCH = 1 << 16  # batch sizes, sequences at once
MAX_PARALLEL = 1024  # shards, processes, devices, concurrent jobs
MAX_STEPS = 1_000_000_000  # optimizer-step intervals
MAX_SEED = 2**32 - 1


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
    prompts_per_iteration: Count = Field(
        2048,
        gt=0,
        le=MAX_ROWS,
        description="Prompts drawn uniformly with replacement per iteration.",
    )
    num_valid_prompts: Count | None = Field(
        None, gt=0, le=MAX_ROWS, description="Use only the first N validation prompts (None: all)."
    )
    max_prompt_tokens: Count = Field(
        512,
        gt=0,
        le=MAX_TOKENS,
        description="Longer prompts are cut from the left to this many tokens.",
    )
    demo_num_train: Count = Field(
        4000, gt=0, le=MAX_ROWS, description="Demo only: train prompts generated."
    )
    demo_num_valid: Count = Field(
        128, gt=0, le=MAX_ROWS, description="Demo only: validation prompts generated."
    )
    # RealToxicityPrompts-style filters (source hf or file): columns `challenging` and
    # the prompt's toxicity (`prompt.toxicity` in the allenai/real-toxicity-prompts layout).
    challenging_only: bool = Field(
        False,
        description="Keep only rows whose 'challenging' column is true (RealToxicityPrompts' "
        "challenging subset).",
    )
    prompt_toxicity_range: tuple[float, float] | None = Field(
        None,
        description="Keep only rows whose data.toxicity_column lies in [low, high] (rows "
        "without a score are dropped); None: no filter.",
    )
    toxicity_column: str = Field(
        "prompt.toxicity",
        description="Column of the prompt's own toxicity score (nested fields by dotted path).",
    )
    holdout_share: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Hold out this share of the train split as validation prompts (chosen by "
        "a hash of the prompt text, so stable across runs and filters), for data sets with "
        "one split such as RealToxicityPrompts; data.valid_split / valid_path are then unused.",
    )

    @field_validator("prompt_toxicity_range")
    @classmethod
    def _toxicity_range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0 <= value[0] <= value[1] <= 1:
            raise ValueError("prompt_toxicity_range must be [low, high] with 0 <= low <= high <= 1")
        return value


class SamplingConfig(StrictModel):
    backend: Literal["vllm", "hf"] = Field(
        "vllm", description="Generation engine: vLLM (CPU or GPU build) or transformers' generate."
    )
    num_generations: Count = Field(
        20, gt=0, le=MAX_BATCH, description="Generations per prompt (train)."
    )
    temperature: float = Field(0.9, ge=0, description="Sampling temperature (train).")
    top_p: float = Field(0.9, gt=0, le=1, description="Nucleus sampling mass (train).")
    max_new_tokens: Count = Field(
        64, gt=0, le=MAX_TOKENS, description="Maximum generated tokens (train)."
    )
    num_shards: Count = Field(
        1, gt=0, le=MAX_PARALLEL, description="Contiguous prompt shards, one engine each."
    )
    concurrency: Count = Field(
        1,
        gt=0,
        le=MAX_PARALLEL,
        description="Shards that run at once (GPU slots on GPUs, core groups on CPU).",
    )
    tensor_parallel_size: Count = Field(
        1, gt=0, le=MAX_PARALLEL, description="vLLM tensor parallel degree."
    )
    gpu_memory_utilization: float = Field(
        0.85, gt=0, le=1, description="vLLM's memory share for weights and KV cache on a GPU."
    )
    cpu_kvcache_gib: float = Field(
        1.0, gt=0, le=1 << 20, description="CPU build only: GiB of host memory for vLLM's KV cache."
    )
    enforce_eager: bool = Field(True, description="Skip CUDA-graph / torch.compile warm-up.")
    max_num_seqs: Count = Field(
        256, gt=0, le=MAX_BATCH, description="vLLM's cap on sequences in one batch."
    )
    engine_reuse: bool = Field(
        True,
        description="Start each engine once per run: one kept vLLM engine per device slot "
        "serves every sampling stage, switching to each new policy in place (checked "
        "against a probe), and the reference-perplexity scorer and a reward model stay "
        "loaded. Off: a process and an engine per shard. Never changes the samples.",
    )
    sleep_level: Literal[0, 1, 2] = Field(
        1,
        description="GPU only: how a kept engine sleeps between its jobs, so that a training "
        "on the same GPU gets the memory (vLLM sleep mode). 1: weights to host memory, KV "
        "cache freed; 2: both freed, the weights reloaded on waking; 0: no sleep. No-op "
        "on the CPU.",
    )


Provider = Literal[
    "auto",
    "sentiment",
    "reward_model",
    "rule_critic",
    "judge",
    "toxicity_classifier",
    "perspective",
    "profanity",
]
# Providers that score toxicity (reward = 1 - toxicity): the toxicity task's metrics.
TOXICITY_PROVIDERS = ("toxicity_classifier", "perspective", "profanity")
# Providers that give a scalar reward, and those that write textual feedback.
REWARD_PROVIDERS = ("sentiment", "reward_model", *TOXICITY_PROVIDERS)
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
    batch_size: Count = Field(32, gt=0, le=MAX_BATCH, description="Reward model batch size.")
    max_length: Count = Field(
        550, gt=0, le=MAX_TOKENS, description="Reward model input truncation, in tokens."
    )
    concurrency: Count = Field(
        1,
        gt=0,
        le=MAX_PARALLEL,
        description="Feedback shards (one per sampling shard) that run at once.",
    )
    judge: JudgeConfig = Field(
        default_factory=JudgeConfig,
        description="The LLM judge (provider 'judge'): endpoint, model, prompt template (its "
        "parser must suit the method: lmu for alt_lmu, lmc for alt_lmc, steerlm for steerlm), "
        "concurrency, rate limits and retries. The API key is never set here.",
    )
    toxicity: ToxicityConfig = Field(
        default_factory=ToxicityConfig,
        description="The toxicity scorers (providers toxicity_classifier, perspective, "
        "profanity; reward = 1 - toxicity): classifier and toxic label, the Perspective API "
        "client, the toxic threshold of the metrics.",
    )
    max_missing_share: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Largest share of a feedback shard's rows (those with a generation) whose "
        "feedback may be missing, an unparseable judge answer included; above it the shard "
        "fails with the causes (judge unreachable, HTTP 401, 429 budget spent, unparseable, "
        "...) and is not committed, and a rerun asks only for what is missing. 0: every row "
        "needs feedback; 1: never fail.",
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
    num_quantiles: Count = Field(
        5, gt=0, le=1000, description="Reward quantiles per prompt (Quark, ALT_RM)."
    )
    quantile_phrases: list[str] = Field(
        default_factory=lambda: ["Excellent.", "Good.", "Mediocre.", "Bad.", "Horrible."],
        description="ALT_RM: the feedback phrase of each quantile, best first.",
    )
    num_samples_per_quantile: Count = Field(
        2,
        gt=0,
        le=MAX_BATCH,
        description="Quark/ALT_RM: training samples drawn per prompt and quantile.",
    )
    num_samples_per_prompt: Count = Field(
        8,
        gt=0,
        le=MAX_BATCH,
        description="ALT_LMU/LMC/SteerLM: samples per prompt, spread over buckets.",
    )
    feedback_prefix: str | None = Field(
        None, description="Text before the feedback (default: '' for ALT_RM, 'feedback: ' else)."
    )
    prompt_prefix: str = Field(" input: ", description="Text between feedback and prompt.")


class TrainingConfig(StrictModel):
    learning_rate: float = Field(2e-5, gt=0, le=1, description="AdamW peak learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    epochs: Count = Field(
        2, gt=0, le=1000, description="Epochs over the training set per iteration."
    )
    per_device_batch_size: Count = Field(
        8, gt=0, le=MAX_BATCH, description="Sequences per device per step."
    )
    gradient_accumulation_steps: Count = Field(
        1, gt=0, le=MAX_BATCH, description="Micro-batches per update."
    )
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
    num_processes: Count = Field(
        1, gt=0, le=MAX_PARALLEL, description="Training processes (one per GPU)."
    )
    max_seq_len: Count = Field(
        1024, gt=0, le=MAX_TOKENS, description="Prompt plus response tokens, at most."
    )
    checkpoint_every: Count = Field(
        50,
        ge=0,
        le=MAX_STEPS,
        description="Save the full training state (weights, optimizer, LR schedule, RNG, data "
        "position) every N optimizer steps and after the last; a killed training resumes from "
        "the newest. 0: only at the end.",
    )
    keep_checkpoints: Count = Field(
        2,
        gt=0,
        le=1000,
        description="Newest training-state checkpoints kept (on local disk and, for an s3:// "
        "run folder, in the bucket).",
    )
    log_every: Count = Field(
        10,
        gt=0,
        le=MAX_STEPS,
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
    max_new_tokens: Count | None = Field(
        None,
        gt=0,
        le=MAX_TOKENS,
        description="Evaluation generation length (None: sampling.max_new_tokens).",
    )
    samples_per_prompt: Count = Field(
        1,
        gt=0,
        le=MAX_BATCH,
        description="Generations per validation prompt: 1, one greedy generation; more, that "
        "many sampled with evaluation.temperature and evaluation.top_p (the toxicity task's "
        "25). The reward mean and sem, perplexity and distinct-n are over all generations; "
        "the toxicity metrics take the worst sample of each prompt.",
    )
    temperature: float = Field(
        1.0, gt=0, description="Sampling temperature of evaluation (samples_per_prompt > 1)."
    )
    top_p: float = Field(
        0.9,
        gt=0,
        le=1,
        description="Nucleus sampling mass of evaluation (samples_per_prompt > 1).",
    )
    batch_size: Count = Field(
        16, gt=0, le=MAX_BATCH, description="Batch size for reference perplexity."
    )
    evaluate_initial: bool = Field(True, description="Also evaluate the initial policy.")


class StorageConfig(StrictModel):
    cache_dir: str = Field(
        "./runs/.cache",
        description="Store for reusable artifacts shared by runs (the built demo model).",
    )
    local_scratch: str | None = Field(
        None, description="Local folder for model copies pulled from object storage."
    )


class RunSettings(StrictModel):
    """The fields of a RunConfig, each checked on its own but not against the others: what
    a deployed flow's `config` parameter holds, the settings given on top of its preset
    (`alt_core.config.loading.config_from_preset` merges and checks them as a whole).
    Checking the cross-field rules on such a partial config would judge it against the
    model's defaults, not the preset's."""

    name: str = Field("alt-run", description="Run name, shown in Prefect and the report.")
    method: Method = Field(Method.ALT_RM, description=", ".join(m.value for m in Method) + ".")
    iterations: Count = Field(3, gt=0, le=1000, description="ALT iterations (K).")
    seed: Count = Field(
        0, ge=0, le=MAX_SEED, description="Base seed; each iteration and stage derives its own."
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    datapool: DatapoolConfig = Field(default_factory=DatapoolConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)


class RunConfig(RunSettings):
    """A whole run's configuration, its cross-field rules checked."""

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
        if (
            self.feedback.provider == "toxicity_classifier"
            and not self.feedback.toxicity.classifier
        ):
            raise ValueError(
                "feedback.toxicity.classifier is required when feedback.provider="
                "toxicity_classifier (a sequence classifier with a toxic label)"
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
        if self.data.source == "file" and not (
            self.data.train_path and (self.data.valid_path or self.data.holdout_share)
        ):
            raise ValueError(
                "data.source=file needs data.train_path and data.valid_path (or data.holdout_share)"
            )
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

    @property
    def task(self) -> Literal["toxicity", "reward"]:
        """What the evaluation measures: toxicity (a toxicity provider) or a reward."""
        return "toxicity" if self.feedback.provider in TOXICITY_PROVIDERS else "reward"

    def feedback_prefix(self) -> str:
        """datapool.feedback_prefix or the method's default (`alt_core.methods`)."""
        return method_feedback_prefix(self)
