"""ALT_LMU end to end through the real Prefect flow, with feedback from an LLM judge: a
scripted OpenAI-compatible server on loopback (tests/judge_server.py) that also injects
faults. Two iterations, so the second samples conditioned on the exemplar the judge's
feedback of the first chose. Sampling uses transformers' generate: the judge path, not
the engine, is under test here (the vLLM path has its own integration tests)."""

from __future__ import annotations

import pytest

from alt_core import store
from alt_core.pipeline.layout import RunLayout
from tests.support.judge_server import JudgeServer
from tests.support.runs import tiny_run_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_alt_lmu_with_a_judge_through_the_flow(tmp_path, tiny_model_dir, prefect_harness):
    from prefect.artifacts import Artifact

    from flows.run import alt_run

    # The first request gets an off-format answer, and its repair request a 500 (retried).
    script = {"Review": ["off_format", "500"]}
    with JudgeServer(style="lmu", script=script) as server:
        config = tiny_run_config(
            tmp_path,
            tiny_model_dir,
            method="alt_lmu",
            iterations=2,
            sampling={"backend": "hf", "num_generations": 4, "max_new_tokens": 10,
                      "num_shards": 2},
            feedback={
                "provider": "judge",
                "judge_cache": str(tmp_path / "judge-cache"),
                "judge": {"base_url": server.url, "model": "scripted-judge",
                          "template": "tldr_lmu", "timeout_s": 5.0, "backoff_base_s": 0.01,
                          "backoff_max_s": 0.05},
            },
            datapool={"num_samples_per_prompt": 4},
        )  # fmt: skip
        run_dir = str(tmp_path / "run")
        rows = alt_run(config=config, run_dir=run_dir)
        sent = server.counters["requests"]

    layout = RunLayout(run_dir)
    assert [r["iteration"] for r in rows] == [1, 2]
    first, second = rows
    # Every judgement of the iteration is accounted for in its metrics.
    assert first["judge_judgements"] == 12 * 4 and first["judge_missing"] == 0
    assert first["judge_retries"] >= 1 and first["judge_repaired"] >= 1
    assert first["judge_requests"] >= first["judge_judgements"]

    feedback = store.read_tables([layout.shard(1, "train_feedback", i) for i in range(2)])
    assert feedback["score"].between(0, 3).all() and feedback["feedback"].str.len().gt(0).all()
    pool = store.read_table(layout.table(1, "datapool", "pool"))
    assert pool["score"].notna().all()  # the reference forgets the scores; we keep them
    # Iteration 2 samples conditioned on the exemplar: feedback written for a top score.
    top = set(feedback.loc[feedback["score"] == feedback["score"].max(), "feedback"])
    prompts = store.read_table(layout.table(2, "prompts", "prompts"))
    exemplars = prompts["query"].str.extract(r"^feedback: (.*) input: ")[0]
    assert exemplars.notna().all() and exemplars.nunique() == 1 and exemplars[0] in top
    evaluation = store.read_table(layout.table(2, "eval", "eval"))
    assert evaluation["query"].str.startswith(f"feedback: {exemplars[0]} input: ").all()
    assert second["valid_reward_mean"] == second["valid_reward_mean"]  # judged, not NaN

    # The feedback shards reported their progress to the UI.
    artifact = Artifact.get("iter-2-train-feedback-0")
    assert artifact is not None and float(artifact.data) == 100.0

    # Resuming the finished run asks the judge nothing.
    with JudgeServer(style="lmu") as server:
        again = config.model_copy(deep=True)
        again.feedback.judge.base_url = server.url
        alt_run(config=again, run_dir=run_dir)
        assert server.counters.get("requests", 0) == 0, sent
