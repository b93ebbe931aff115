"""A resume under real DeepSpeed and Accelerate never runs code planted in the state folder.

A training saving every 2 steps is killed after step 7; then each of its three checkpoints
gets a planted pickle (`tests.unit.training.test_safe_loading.Payload`): step 6 in its
DeepSpeed model states, found by the hash manifest; step 4 in its ZeRO optimizer states
with the manifest rewritten to match, refused by the data-only unpickler; step 2 in
Accelerate's random-states file, also rewritten, which Accelerate fails to load and
skips. The restarted training resumes from step 2 and ends exactly as an uninterrupted
one, and no planted code ran.
"""

from __future__ import annotations

import pytest

from tests.integration.test_training_resume import baseline, setup  # noqa: F401 - fixtures
from tests.unit.training.test_safe_loading import plant, rehash
from tests.unit.training.test_training_resume import (
    _assert_same_training,
    _checkpoints,
    _run,
    _spec,
    _step_lines,
)


@pytest.mark.integration
def test_planted_pickles_in_a_deepspeed_checkpoint_never_run(setup, baseline, tmp_path):  # noqa: F811
    spec = _spec(setup, "planted").model_copy(update={"checkpoint_every": 2, "keep_checkpoints": 3})
    _run(spec, fail_at=7)
    assert _checkpoints(spec) == ["step-00000002", "step-00000004", "step-00000006"]
    state = spec.resolved_state_dir
    marker = tmp_path / "MARKER"
    plant(state / "step-00000006" / "pytorch_model" / "mp_rank_00_model_states.pt", marker)
    plant(state / "step-00000004" / "pytorch_model" / "zero_pp_rank_0_mp_rank_00_optim_states.pt",
          marker)  # fmt: skip
    rehash(state / "step-00000004")
    plant(state / "step-00000002" / "random_states_0.pkl", marker)
    rehash(state / "step-00000002")

    summary, lines = _run(spec)
    assert not marker.exists()
    text = "\n".join(lines)
    assert "step-00000006: file pytorch_model/mp_rank_00_model_states.pt has" in text
    assert "refused to unpickle pytorch_model/zero_pp_rank_0_mp_rank_00_optim_states.pt" in text
    assert summary["resumed_from_step"] == 2 and _step_lines(lines) == list(range(3, 13))
    _assert_same_training(spec, baseline)
