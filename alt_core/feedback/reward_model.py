"""Reward-model feedback: a sequence classifier with a scalar head scores each sample.

The input is prompt + generation, tokenized and cut to `feedback.max_length` tokens from
the left, so an over-long prompt loses its beginning rather than the generation being
judged. Scoring runs in batches of `feedback.batch_size`, fp16 on a GPU and fp32 on the
CPU. The model is any `AutoModelForSequenceClassification` checkpoint with one label
(a hub name, a local folder, or a committed folder in the artifact store).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from alt_core import store
from alt_core.config import RunConfig
from alt_core.feedback.base import (
    FeedbackProvider,
    classifier_logits,
    feedback_frame,
    missing_generations,
    reason_where,
    score_in_batches,
)
from alt_core.runtime.resident import kept_model


class RewardModelError(RuntimeError):
    """The reward model cannot be loaded or does not return one score per sequence."""


def join_prompt_generation(prompt: pd.Series, generation: pd.Series) -> pd.Series:
    """prompt + generation, with one space between them unless either side brings its
    own whitespace or the generation is empty."""
    prompt, generation = prompt.astype(str), generation.astype(str)
    has_gap = (
        prompt.str.endswith((" ", "\n", "\t"))
        | generation.str.startswith((" ", "\n", "\t"))
        | generation.eq("")
    )
    return prompt + pd.Series(np.where(has_gap, "", " "), index=prompt.index) + generation


class RewardModelProvider(FeedbackProvider):
    name = "reward_model"

    def __init__(
        self,
        model: str,
        batch_size: int = 32,
        max_length: int = 550,
        device: str | None = None,
        trust_remote_code: bool = False,
        scratch: str | None = None,
    ) -> None:
        import torch

        self.model_name = model
        self.batch_size = batch_size
        self.max_length = max_length
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        path = str(store.local_dir(model, scratch)) if store.is_remote(model) else model

        def load() -> tuple[Any, Any]:
            tokenizer, model = _load(path, dtype, trust_remote_code)
            return tokenizer, model.to(self.device).eval()

        # Loaded once per kept worker (`sampling.engine_reuse`), scoring every stage.
        self.tokenizer, self.model = kept_model("reward_model", path, load)

    @classmethod
    def from_config(cls, config: RunConfig) -> RewardModelProvider:
        if not config.feedback.reward_model:
            raise RewardModelError("feedback.reward_model is not set")
        return cls(
            config.feedback.reward_model,
            batch_size=config.feedback.batch_size,
            max_length=config.feedback.max_length,
            trust_remote_code=config.model.trust_remote_code,
            scratch=config.storage.local_scratch,
        )

    def rewards(self, texts: list[str]) -> np.ndarray:
        """One scalar per text, shape (N,). Texts are batched by length to pad little."""

        def batch(chunk: list[str]) -> np.ndarray:
            logits = classifier_logits(self.tokenizer, self.model, chunk, self.max_length)
            if logits.ndim != 2 or logits.shape[-1] != 1:  # (B, num_labels)
                raise RewardModelError(
                    f"reward model {self.model_name!r} returned logits of shape "
                    f"{tuple(logits.shape)}; a reward model must return one score per "
                    f"sequence (num_labels=1)"
                )
            return logits[:, 0].cpu().numpy()

        return score_in_batches(texts, self.batch_size, batch, self.progress)

    def score(self, df: pd.DataFrame) -> pd.DataFrame:
        missing = missing_generations(df)
        reward = pd.Series(np.nan, index=df.index, dtype="float64")
        present = df.loc[~missing]
        if len(present):
            texts = join_prompt_generation(present["prompt"], present["generation"])
            reward.loc[present.index] = self.rewards(texts.tolist())
        # A NaN or infinite reward (an overflow in fp16, a broken head) is missing feedback,
        # counted against feedback.max_missing_share, never a reward to train on; its
        # reason starts with its cause (see base.missing_causes).
        broken = ~missing & ~np.isfinite(reward)
        reward = reward.where(~broken, np.nan)
        reason = reason_where(missing, "no generation").where(
            ~broken, "non_finite: the reward model returned a NaN or infinite reward"
        )
        return feedback_frame(df.index, reward=reward, missing_reason=reason)

    def close(self) -> None:
        import torch

        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _load(path: str, dtype, trust_remote_code: bool):
    """Tokenizer and scalar-head model; refuses a checkpoint without a trained head."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=1,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            # Safetensors only: a pickled pytorch_model.bin in a model folder is never read.
            use_safetensors=True,
            output_loading_info=True,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise RewardModelError(
            f"cannot load reward model {path!r}: {exc}. Set feedback.reward_model to a "
            f"sequence-classification checkpoint with one label (local folder or hub name) "
            f"whose weights are safetensors"
        ) from exc
    if info.get("missing_keys"):
        # A causal LM loads here too, with a randomly initialised head: refuse it rather
        # than train against random rewards.
        raise RewardModelError(
            f"reward model {path!r} lacks trained weights {sorted(info['missing_keys'])[:5]}; "
            f"it is not a scalar-head reward model (AutoModelForSequenceClassification, "
            f"num_labels=1)"
        )
    # Long prompts lose their beginning, never the generation being judged.
    tokenizer.truncation_side = "left"
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Sequence classifiers pool at the last non-pad token, found through this id.
    model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model
