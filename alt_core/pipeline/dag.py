"""The ALT iteration as data: every stage declared once.

    prepare ─▶ (iteration 0 evaluation) ─▶ iteration 1 ─▶ iteration 2 ─▶ ...

    iteration k:   prompts ─▶ train_sample[i] ─▶ train_feedback[i] ─▶ datapool ─▶ train
                      ▲ (judge methods: the exemplar from the pool of k-1)          │
    evaluation k:  eval_prompts ─▶ eval_sample[i] ─▶ eval_feedback[i] ─▶ eval_join ─▶ perplexity
                      (policy k; the exemplar of iteration k+1)

Each `Stage` names the config sections its outputs depend on (hashed whole, less the
throughput-only fields of `pipeline.fingerprints` and its own commented `ignore` list),
the stages it runs after, and a planner that turns the run's state into `Node`s: the
units of work (a stage, or one shard of it) with their input and output URIs, typed spec
and the resolved values their fingerprint hashes. The flow (`flows/iteration.py`), the
tasks (`tasks_lib/stages.py`, through `pipeline.stages.run_node`) and `alt status`
(`pipeline.status`) all read these declarations: a new stage or input is one edit here.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from alt_core import methods, store
from alt_core.config import RunConfig
from alt_core.pipeline import fingerprints as fps
from alt_core.pipeline.layout import RunInputs, RunLayout
from alt_core.pipeline.specs import (
    DatapoolSpec,
    FeedbackSpec,
    JoinSpec,
    PerplexitySpec,
    PromptsSpec,
    TrainStageSpec,
)
from alt_core.sampling.spec import EngineSettings, GenerationParams, SampleSpec


def stage_seed(config: RunConfig, iteration: int, stage: str) -> int:
    """Every stage derives its own seed from the run seed, the iteration and a salt, so a
    rerun of a stage draws exactly what the first run drew."""
    return (config.seed * 1_000_003 + iteration * 7_919 + zlib.crc32(stage.encode())) % 2**31


class NotReady(Exception):  # noqa: N818 - a state, not an error: planning waits on inputs
    """A stage cannot be planned yet: an input it reads to plan (the prompt count, the
    previous pool) is not committed. `outputs` are its outputs where they are known."""

    def __init__(self, what: str, outputs: Sequence[str] = ()):
        super().__init__(what)
        self.outputs = list(outputs)


@dataclass(frozen=True)
class Ctx:
    """What a planner sees: the run, its resolved inputs and the iteration."""

    config: RunConfig
    layout: RunLayout
    inputs: RunInputs
    iteration: int


@dataclass(frozen=True)
class Node:
    """One unit of work: a stage, or one shard of it."""

    stage: str
    name: str  # task-run, progress-artifact and log name, e.g. iter-1-train-sample-0
    iteration: int
    inputs: list[str]  # URIs whose content the outputs are made from
    outputs: list[str]  # URIs the stage commits
    spec: BaseModel
    extra: dict[str, Any] = field(default_factory=dict)  # resolved values hashed too

    def fingerprint(self, config: RunConfig) -> str:
        stage = STAGES[self.stage]
        part = fps.config_identity(config, stage.config, stage.ignore)
        return fps.fingerprint(self.stage, part, self.inputs, self.extra)


Planned = Mapping[str, Sequence[Node]]


@dataclass(frozen=True)
class Stage:
    name: str
    label: str  # its row in `alt status`
    config: tuple[str, ...]
    plan: Callable[[Ctx, Planned], list[Node]]
    after: tuple[str, ...] = ()  # stages whose results it waits for
    # Sharded stages that pair with another's shards: shard i starts when shard i of
    # that stage is committed (feedback overlaps with the sampling of other shards).
    per_shard_of: str | None = None
    # Fields of its sections that another stage uses, not this one (with the reason).
    ignore: tuple[str, ...] = ()


# ---------------------------------------------------------------------- config sections

# What conditions a query: the method's feedback text and prefixes, and the exemplar
# rule (the chosen exemplar itself is hashed as a resolved value).
CONDITIONING = (
    "method",
    "datapool.quantile_phrases",
    "datapool.feedback_prefix",
    "datapool.prompt_prefix",
    "datapool.num_quantiles",
    "feedback.exemplar_rule",
    "feedback.exemplar_text",
)
# Settings of the validation prompts only: they never touch iteration sampling.
VALIDATION_DATA = (
    "data.valid_path",
    "data.valid_split",
    "data.num_valid_prompts",
    "data.demo_num_valid",
)
# The KL reference is the trainer's and the perplexity scorer's, not the sampler's.
SAMPLER_MODEL_IGNORE = ("model.reference",)
# The evaluation's sample count and sampling settings are resolved into the eval
# samplers' generation parameters (hashed there): at one sample they are unused (greedy),
# so changing them restales nothing, and a run made before they existed keeps its
# fingerprints. The perplexity sees their effect through the scored table.
EVAL_SAMPLING = ("evaluation.samples_per_prompt", "evaluation.temperature", "evaluation.top_p")
# The exemplar settings condition the prompts (hashed there), not the scoring.
FEEDBACK_IGNORE = ("feedback.exemplar_rule", "feedback.exemplar_text")


# ---------------------------------------------------------------------- shared planning


def shard_bounds(num_rows: int, num_shards: int) -> list[tuple[int, int]]:
    """Contiguous [start, stop) ranges; the first `num_rows % num_shards` get one more."""
    if num_rows <= 0:
        raise ValueError("cannot shard an empty prompt set")
    if num_shards > num_rows:
        raise ValueError(
            f"{num_shards} shards for {num_rows} prompts: lower sampling.num_shards to at "
            f"most {num_rows}"
        )
    base, extra = divmod(num_rows, num_shards)
    bounds, start = [], 0
    for i in range(num_shards):
        stop = start + base + (1 if i < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def policy_in(ctx: Ctx) -> str:
    """The policy iteration k starts from: the initial one, then k-1's."""
    return ctx.inputs.policy_uri if ctx.iteration == 1 else ctx.layout.policy(ctx.iteration - 1)


def previous_pool(ctx: Ctx) -> list[str]:
    k = ctx.iteration
    return [ctx.layout.table(k - 1, "datapool", "pool")] if k > 1 else []


def exemplar_for(config: RunConfig, layout: RunLayout, iteration: int) -> str | None:
    """Exemplar feedback for sampling in `iteration` (None: the raw prompt).

    Iteration 1 samples from the initial policy with the raw prompt; later iterations
    condition on the feedback that names the behaviour we want. For judge methods it is
    chosen from the previous iteration's pool (see `alt_core.datapool.choose_exemplar`).
    """
    if iteration <= 1:
        return None
    if not methods.uses_judge(config):
        return methods.default_exemplar(config)
    from alt_core.datapool import choose_exemplar

    pool = store.read_table(layout.table(iteration - 1, "datapool", "pool"))
    return choose_exemplar(pool, config)


def eval_exemplar(config: RunConfig, layout: RunLayout, iteration: int) -> str | None:
    """Validation is conditioned like the next iteration's sampling; the initial policy
    (iteration 0) has never seen feedback, so it gets the raw prompt."""
    return None if iteration == 0 else exemplar_for(config, layout, iteration + 1)


def _exemplar(ctx: Ctx, of_iteration: int, outputs: list[str]) -> str | None:
    try:
        return exemplar_for(ctx.config, ctx.layout, of_iteration)
    except (store.ArtifactError, FileNotFoundError) as exc:
        raise NotReady(f"the exemplar's pool: {exc}", outputs) from None


def _exemplar_inputs(ctx: Ctx, of_iteration: int) -> list[str]:
    """Judge methods take the exemplar from the previous pool; reward methods' is fixed."""
    if of_iteration > 1 and methods.uses_judge(ctx.config):
        return [ctx.layout.table(of_iteration - 1, "datapool", "pool")]
    return []


def _committed_rows(uri: str, outputs: list[str]) -> int:
    info = store.commit_info(uri)
    if info is None:
        raise NotReady(f"{uri} is not committed", outputs)
    return int(info["rows"])


# ---------------------------------------------------------------------- planners


def plan_prompts(ctx: Ctx, planned: Planned) -> list[Node]:
    k = ctx.iteration
    out = ctx.layout.table(k, "prompts", "prompts")
    exemplar = _exemplar(ctx, k, [out])
    spec = PromptsSpec(
        source_uri=ctx.inputs.train_prompts_uri,
        output_uri=out,
        exemplar=exemplar,
        draw=ctx.config.data.prompts_per_iteration,
        seed=stage_seed(ctx.config, k, "prompts"),
    )
    inputs = [ctx.inputs.train_prompts_uri, *_exemplar_inputs(ctx, k)]
    extra = {"iteration": k, "exemplar": exemplar, "seed": spec.seed}
    return [Node("prompts", f"iter-{k}-prompts", k, inputs, [out], spec, extra)]


def plan_eval_prompts(ctx: Ctx, planned: Planned) -> list[Node]:
    k = ctx.iteration
    out = ctx.layout.table(k, "eval", "prompts")
    exemplar = None if k == 0 else _exemplar(ctx, k + 1, [out])
    spec = PromptsSpec(source_uri=ctx.inputs.valid_prompts_uri, output_uri=out, exemplar=exemplar)
    inputs = [ctx.inputs.valid_prompts_uri, *([] if k == 0 else _exemplar_inputs(ctx, k + 1))]
    return [
        Node(
            "eval_prompts", f"iter-{k}-eval-prompts", k, inputs, [out], spec, {"exemplar": exemplar}
        )
    ]


def _plan_samples(ctx: Ctx, phase: str, prompts: Node, model_uri: str) -> list[Node]:
    config, k = ctx.config, ctx.iteration
    evaluation = phase == "eval"
    outputs = lambda i: ctx.layout.shard(k, f"{phase}_samples", i)  # noqa: E731
    rows = _committed_rows(prompts.outputs[0], [])
    shards = min(config.sampling.num_shards, rows) if evaluation else config.sampling.num_shards
    params = GenerationParams.evaluation(config) if evaluation else GenerationParams.train(config)
    engine = EngineSettings.from_config(config)
    seed = stage_seed(config, k, f"{phase}-sample")
    nodes = []
    for i, (start, stop) in enumerate(shard_bounds(rows, shards)):
        spec = SampleSpec(
            model_path=model_uri,
            prompts_uri=prompts.outputs[0],
            output_uri=outputs(i),
            start=start,
            stop=stop,
            seed=seed,
            params=params,
            engine=engine,
            backend=config.sampling.backend,
        )
        name = f"iter-{k}-{phase}-sample-{i}"
        inputs = [prompts.outputs[0], model_uri]
        nodes.append(
            Node(f"{phase}_sample", name, k, inputs, [outputs(i)], spec, _sample_extra(spec))
        )
    return nodes


def _sample_extra(spec: SampleSpec) -> dict[str, Any]:
    return {
        "start": spec.start,
        "stop": spec.stop,
        "seed": spec.seed,
        "params": spec.params.model_dump(),
    }


def _feedback_extra(config: RunConfig) -> dict[str, Any]:
    if config.feedback.provider != "judge":
        return {}
    # A template is named in the config but its text may change under the same name (an
    # edited file): its content hash decides, as it does for the judge's cache.
    from alt_core.feedback.judge import load_template

    return {"template": load_template(config.feedback.judge.template).content_hash}


def _plan_feedback(ctx: Ctx, phase: str, samples: Sequence[Node]) -> list[Node]:
    k, config = ctx.iteration, ctx.config
    extra = _feedback_extra(config)
    nodes = []
    for i, sample in enumerate(samples):
        out = ctx.layout.shard(k, f"{phase}_feedback", i)
        spec = FeedbackSpec(config=config, input_uri=sample.outputs[0], output_uri=out)
        name = f"iter-{k}-{phase}-feedback-{i}"
        nodes.append(Node(f"{phase}_feedback", name, k, [sample.outputs[0]], [out], spec, extra))
    return nodes


def _upstream(planned: Planned, stage: str, outputs: list[str]) -> Sequence[Node]:
    nodes = planned.get(stage)
    if nodes is None:
        raise NotReady(f"{stage} is not planned yet", outputs)
    return nodes


def plan_train_sample(ctx: Ctx, planned: Planned) -> list[Node]:
    (prompts,) = _upstream(planned, "prompts", [])
    return _plan_samples(ctx, "train", prompts, policy_in(ctx))


def plan_eval_sample(ctx: Ctx, planned: Planned) -> list[Node]:
    (prompts,) = _upstream(planned, "eval_prompts", [])
    policy = ctx.inputs.policy_uri if ctx.iteration == 0 else ctx.layout.policy(ctx.iteration)
    return _plan_samples(ctx, "eval", prompts, policy)


def plan_train_feedback(ctx: Ctx, planned: Planned) -> list[Node]:
    return _plan_feedback(ctx, "train", _upstream(planned, "train_sample", []))


def plan_eval_feedback(ctx: Ctx, planned: Planned) -> list[Node]:
    return _plan_feedback(ctx, "eval", _upstream(planned, "eval_sample", []))


def plan_datapool(ctx: Ctx, planned: Planned) -> list[Node]:
    k, layout = ctx.iteration, ctx.layout
    outputs = [layout.table(k, "datapool", "pool"), layout.table(k, "datapool", "train")]
    feedback = [n.outputs[0] for n in _upstream(planned, "train_feedback", outputs)]
    previous = previous_pool(ctx)
    spec = DatapoolSpec(
        feedback_uris=feedback,
        previous_pool_uri=previous[0] if previous else None,
        pool_uri=outputs[0],
        train_uri=outputs[1],
        iteration=k,
        seed=stage_seed(ctx.config, k, "datapool"),
    )
    extra = {"iteration": k, "seed": spec.seed}
    return [Node("datapool", f"iter-{k}-datapool", k, [*feedback, *previous], outputs, spec, extra)]


def plan_train(ctx: Ctx, planned: Planned) -> list[Node]:
    k, config = ctx.iteration, ctx.config
    out = ctx.layout.policy(k)
    train_uri = ctx.layout.table(k, "datapool", "train")
    spec = TrainStageSpec(
        train_uri=train_uri,
        policy_uri=policy_in(ctx),
        reference_uri=ctx.inputs.reference_uri,
        output_uri=out,
        state_uri=ctx.layout.training_state(k) if store.is_remote(out) else None,
        added_tokens=methods.added_tokens(config),
        seed=stage_seed(config, k, "train"),
        # The trackers' run name becomes a folder and a W&B project: safe characters only.
        run_name=re.sub(r"[^\w.-]+", "-", f"{config.name}-iter-{k:03d}"),
    )
    inputs = [train_uri, spec.policy_uri, spec.reference_uri]
    extra = {"added_tokens": spec.added_tokens, "seed": spec.seed}
    return [Node("train", f"iter-{k}-train", k, inputs, [out], spec, extra)]


def plan_eval_join(ctx: Ctx, planned: Planned) -> list[Node]:
    k = ctx.iteration
    out = ctx.layout.table(k, "eval", "scored")
    feedback = [n.outputs[0] for n in _upstream(planned, "eval_feedback", [out])]
    spec = JoinSpec(feedback_uris=feedback, output_uri=out)
    return [Node("eval_join", f"iter-{k}-eval-join", k, feedback, [out], spec)]


def plan_perplexity(ctx: Ctx, planned: Planned) -> list[Node]:
    k = ctx.iteration
    scored = ctx.layout.table(k, "eval", "scored")
    out = ctx.layout.table(k, "eval", "eval")
    spec = PerplexitySpec(
        input_uri=scored,
        output_uri=out,
        reference_path=ctx.inputs.reference_uri,
        batch_size=ctx.config.evaluation.batch_size,
    )
    inputs = [scored, ctx.inputs.reference_uri]
    return [Node("perplexity", f"iter-{k}-perplexity", k, inputs, [out], spec)]


def shard_node(config: RunConfig, kind: str, spec: dict[str, Any], name: str) -> Node:
    """The node of one sampling or feedback shard from its spec alone, for a shard sent
    to another host (`deployments.shards`): the same node, and so the same fingerprint,
    as the flow plans."""
    m = re.search(
        r"/iter_(\d+)/(train|eval)_(samples|feedback)/shard_\d+\.parquet$", spec["output_uri"]
    )
    if kind not in ("sample", "feedback"):
        raise ValueError(f"{name}: kind must be 'sample' or 'feedback' (got {kind!r})")
    # A shard written outside a run folder's layout (a one-off) counts as a train shard.
    k, phase = (int(m.group(1)), m.group(2)) if m else (0, "train")
    if kind == "sample":
        sample = SampleSpec.model_validate(spec)
        inputs = [sample.prompts_uri, sample.model_path]
        return Node(
            f"{phase}_sample", name, k, inputs, [sample.output_uri], sample, _sample_extra(sample)
        )
    fb = FeedbackSpec.model_validate({**spec, "config": config})
    return Node(
        f"{phase}_feedback", name, k, [fb.input_uri], [fb.output_uri], fb, _feedback_extra(config)
    )


# ---------------------------------------------------------------------- the declaration

ITERATION: tuple[Stage, ...] = (
    Stage("prompts", "prompts", ("seed", "data", *CONDITIONING), plan_prompts,
          ignore=VALIDATION_DATA),
    Stage("train_sample", "train samples", ("seed", "model", "sampling", "data.max_prompt_tokens"),
          plan_train_sample, after=("prompts",), ignore=SAMPLER_MODEL_IGNORE),
    Stage("train_feedback", "train feedback", ("method", "feedback"), plan_train_feedback,
          per_shard_of="train_sample", ignore=FEEDBACK_IGNORE),
    Stage("datapool", "datapool", ("seed", "method", "datapool"), plan_datapool,
          after=("train_feedback",)),
    Stage("train", "train", ("seed", "method", "training"), plan_train, after=("datapool",)),
)  # fmt: skip

EVALUATION: tuple[Stage, ...] = (
    Stage("eval_prompts", "eval prompts", ("data.num_valid_prompts", *CONDITIONING),
          plan_eval_prompts),
    # Only the evaluation's generation settings (resolved into the node's parameters)
    # and the engine's, never the train sampling temperature or count.
    Stage("eval_sample", "eval samples",
          ("model", "sampling.backend", "data.max_prompt_tokens", "evaluation"),
          plan_eval_sample, after=("eval_prompts",),
          ignore=(*SAMPLER_MODEL_IGNORE, *EVAL_SAMPLING)),
    Stage("eval_feedback", "eval feedback", ("method", "feedback"), plan_eval_feedback,
          per_shard_of="eval_sample", ignore=FEEDBACK_IGNORE),
    Stage("eval_join", "eval", (), plan_eval_join, after=("eval_feedback",)),
    # The generation settings are the samplers'; their effect arrives in the scored table.
    Stage("perplexity", "eval", ("data.max_prompt_tokens", "evaluation"), plan_perplexity,
          after=("eval_join",), ignore=("evaluation.max_new_tokens", *EVAL_SAMPLING)),
)  # fmt: skip

STAGES: dict[str, Stage] = {s.name: s for s in (*ITERATION, *EVALUATION)}
