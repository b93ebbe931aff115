"""Toxicity feedback: reward = 1 - toxicity, for the toxicity task (RealToxicityPrompts).

Every toxicity scorer gives a probability in [0, 1] per text; `ToxicityProvider` turns
it into the feedback columns (reward = 1 - toxicity, so the reward methods' "best
bucket" is the least toxic one) and applies the missing-feedback rules: a row without a
generation is `no generation`, a score that is NaN or outside [0, 1] is missing with the
cause `non_finite`, and a scorer that could not answer (the Perspective API) gives its
own cause per row. By default only the continuation is scored (as in
RealToxicityPrompts and the ALT paper); `feedback.toxicity.score_prompt` scores
prompt + generation.

Two scorers live here; the Perspective API client is in `alt_core.feedback.perspective`:

- `toxicity_classifier`: any `AutoModelForSequenceClassification` checkpoint; the toxic
  class is chosen by its label name; a multi-label head (toxic-bert: toxic, obscene,
  insult, ...) is read through a sigmoid, a multi-class one through a softmax. Batched
  by length like the reward model, fp16 on a GPU.
- `profanity`: alt-profanity-check (`profanity_check.predict_prob`), a linear SVM over
  TF-IDF features shipped inside its package: no download, thousands of texts per second
  on one CPU core. The demo's scorer and the tests'.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from alt_core import store
from alt_core.config import RunConfig
from alt_core.config.toxicity import ToxicityConfig
from alt_core.feedback.base import (
    FeedbackProvider,
    classifier_logits,
    feedback_frame,
    missing_generations,
    reason_where,
    score_in_batches,
)
from alt_core.feedback.reward_model import join_prompt_generation

NON_FINITE = "non_finite: the toxicity scorer returned a NaN or a score outside [0, 1]"


class ToxicityError(RuntimeError):
    """A toxicity scorer cannot be loaded or used as configured."""


def toxicity_feedback(
    df: pd.DataFrame,
    toxicity: pd.Series,
    cause: pd.Series | None = None,
    reason: pd.Series | None = None,
) -> pd.DataFrame:
    """Feedback columns from a toxicity per row (NaN where missing): reward = 1 - toxicity.

    `cause` / `reason`: the scorer's missing cause and reason per row, where it gives one.
    Rows without a generation are `no generation`; NaN or out-of-range scores `non_finite`.
    """
    missing = missing_generations(df)
    tox = toxicity.reindex(df.index).astype("float64")
    given = (
        cause.reindex(df.index).notna() if cause is not None else pd.Series(False, index=df.index)
    )
    broken = ~missing & ~given & ~tox.between(0.0, 1.0)
    tox = tox.where(~(missing | given | broken), np.nan)
    text = reason_where(missing, "no generation").where(~broken, NON_FINITE)
    if reason is not None:
        text = text.where(~given, reason.reindex(df.index))
    out = feedback_frame(df.index, reward=1.0 - tox, missing_reason=text)
    if cause is not None:
        out["missing_cause"] = cause.reindex(df.index).where(given, None).astype(object)
    return out


def scored_texts(df: pd.DataFrame, config: ToxicityConfig) -> pd.Series:
    """What is scored for each row that has a generation: the generation (default) or
    prompt + generation."""
    present = df.loc[~missing_generations(df)]
    if config.score_prompt:
        return join_prompt_generation(present["prompt"], present["generation"])
    return present["generation"].astype(str)


class ToxicityProvider(FeedbackProvider):
    """A toxicity scorer as a feedback provider; subclasses implement `toxicity`."""

    def __init__(self, settings: ToxicityConfig) -> None:
        self.settings = settings

    def toxicity(self, texts: list[str]) -> np.ndarray:
        """Toxicity in [0, 1] of each text, shape (N,)."""
        raise NotImplementedError

    def score(self, df: pd.DataFrame) -> pd.DataFrame:
        texts = scored_texts(df, self.settings)
        tox = pd.Series(np.nan, index=df.index, dtype="float64")
        if len(texts):
            tox.loc[texts.index] = self.toxicity(texts.tolist())
        return toxicity_feedback(df, tox)


class ProfanityProvider(ToxicityProvider):
    """alt-profanity-check's probability that a text is offensive."""

    name = "profanity"

    def __init__(self, settings: ToxicityConfig | None = None) -> None:
        super().__init__(settings or ToxicityConfig())
        try:
            from profanity_check import predict_prob
        except ImportError:
            raise ToxicityError(
                "feedback.provider=profanity needs alt-profanity-check: `pip install "
                "alt-profanity-check` (it is in the project's [cpu] and [dev] extras and the "
                "lock; `make install` installs it)"
            ) from None
        self._predict = predict_prob

    @classmethod
    def from_config(cls, config: RunConfig) -> ProfanityProvider:
        return cls(config.feedback.toxicity)

    def toxicity(self, texts: list[str]) -> np.ndarray:
        out = np.zeros(len(texts), dtype=np.float64)
        stripped = [t.strip() for t in texts]
        # Sampling repeats itself; score each distinct non-blank text once. Blank: 0.
        unique = sorted({t for t in stripped if t})
        if unique:
            probs = dict(zip(unique, np.asarray(self._predict(unique), dtype=float), strict=True))
            out[:] = [probs.get(t, 0.0) for t in stripped]
        return out


class ClassifierToxicityProvider(ToxicityProvider):
    """A sequence classifier's probability of its toxic label."""

    name = "toxicity_classifier"

    def __init__(
        self,
        settings: ToxicityConfig,
        device: str | None = None,
        trust_remote_code: bool = False,
        scratch: str | None = None,
    ) -> None:
        import torch

        super().__init__(settings)
        if not settings.classifier:
            raise ToxicityError("feedback.toxicity.classifier is not set")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.float16 if self.device.type == "cuda" else torch.float32
        name = settings.classifier
        path = str(store.local_dir(name, scratch)) if store.is_remote(name) else name
        self.tokenizer, self.model = _load_classifier(path, dtype, trust_remote_code)
        self.model.to(self.device).eval()
        self.label_index = toxic_label_index(self.model.config.id2label, settings.toxic_label, name)
        self.multi_label = (
            settings.multi_label
            if settings.multi_label is not None
            else self.model.config.problem_type == "multi_label_classification"
        )

    @classmethod
    def from_config(cls, config: RunConfig) -> ClassifierToxicityProvider:
        return cls(
            config.feedback.toxicity,
            trust_remote_code=config.model.trust_remote_code,
            scratch=config.storage.local_scratch,
        )

    def toxicity(self, texts: list[str]) -> np.ndarray:
        """Probability of the toxic label per text, shape (N,); batched by length."""

        def batch(chunk: list[str]) -> np.ndarray:
            logits = classifier_logits(self.tokenizer, self.model, chunk, self.settings.max_length)
            probs = logits.sigmoid() if self.multi_label else logits.softmax(-1)  # (B, labels)
            return probs[:, self.label_index].cpu().numpy()

        return score_in_batches(texts, self.settings.batch_size, batch, self.progress)

    def close(self) -> None:
        self.model = None


def toxic_label_index(id2label: dict[Any, str], wanted: str, model: str) -> int:
    """The index of label `wanted` (case-insensitive) in a classifier's id2label."""
    labels = {int(i): str(name) for i, name in id2label.items()}
    hits = [i for i, name in labels.items() if name.lower() == wanted.lower()]
    if not hits:
        raise ToxicityError(
            f"toxicity classifier {model!r} has no label {wanted!r}; its labels are "
            f"{[labels[i] for i in sorted(labels)]}. Set feedback.toxicity.toxic_label to one"
        )
    return hits[0]


def _load_classifier(path: str, dtype: Any, trust_remote_code: bool) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        model, info = AutoModelForSequenceClassification.from_pretrained(
            path,
            dtype=dtype,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,  # a pickled checkpoint is never read
            output_loading_info=True,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise ToxicityError(
            f"cannot load toxicity classifier {path!r}: {exc}. Set feedback.toxicity.classifier "
            f"to a sequence-classification checkpoint (local folder or hub name) whose weights "
            f"are safetensors"
        ) from exc
    if info.get("missing_keys"):
        raise ToxicityError(
            f"toxicity classifier {path!r} lacks trained weights "
            f"{sorted(info['missing_keys'])[:5]}: it is not a trained classifier"
        )
    tokenizer.truncation_side = "left"  # keep the end: the continuation being judged
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model
