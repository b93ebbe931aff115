"""The toxicity providers on fixtures: profanity-check on fixed strings, a tiny
multi-label classifier built here, the Perspective client against a loopback server
(429s, 5xx, malformed answers), and the toxicity metrics against a hand computation."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from alt_core.config.toxicity import PerspectiveConfig, ToxicityConfig
from alt_core.evaluation import eval_metrics, toxicity_metrics
from alt_core.feedback.base import FeedbackIncompleteError, check_complete, missing_causes
from alt_core.feedback.perspective import PerspectiveProvider
from alt_core.feedback.toxicity import (
    ClassifierToxicityProvider,
    ProfanityProvider,
    ToxicityError,
)
from tests.support.perspective_server import PerspectiveServer


def _rows(generations: list) -> pd.DataFrame:
    return pd.DataFrame(
        {"prompt": ["The waiter was"] * len(generations), "generation": generations}
    )


def test_profanity_scores_insults_as_toxic_and_plain_text_as_not():
    out = ProfanityProvider().score(
        _rows(["an idiot and a moron.", "friendly and quick.", "", None, "an idiot and a moron."])
    )
    tox = 1.0 - out["reward"]
    assert tox[0] > 0.9 and tox[4] == tox[0]  # an insult; the same text, the same score
    assert tox[1] < 0.2  # plain text
    assert tox[2] == 0.0  # blank: nothing offensive written
    assert np.isnan(out["reward"][3]) and out["missing_reason"][3] == "no generation"
    assert out["missing_reason"][[0, 1, 2, 4]].isna().all()


def _tiny_classifier(tmp_path, problem_type: str):
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "you", "idiot", "nice", "day", "the"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    tok = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"))
    config = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=32, num_labels=3,
                        id2label={0: "obscene", 1: "Toxic", 2: "insult"},
                        label2id={"obscene": 0, "Toxic": 1, "insult": 2},
                        problem_type=problem_type)  # fmt: skip
    torch.manual_seed(0)
    model = BertForSequenceClassification(config).eval()
    out = tmp_path / problem_type
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out, model, tok


@pytest.mark.parametrize(
    "problem_type", ["multi_label_classification", "single_label_classification"]
)
def test_classifier_reads_the_named_label_batched(tmp_path, problem_type):
    import torch

    path, model, tok = _tiny_classifier(tmp_path, problem_type)
    settings = ToxicityConfig(classifier=str(path), toxic_label="toxic", batch_size=2)
    provider = ClassifierToxicityProvider(settings, device="cpu")
    texts = ["you idiot", "nice day", "the day", "you", "idiot idiot idiot"]
    got = 1.0 - provider.score(_rows(texts))["reward"].to_numpy()
    with torch.no_grad():
        logits = torch.cat([model(**tok([t], return_tensors="pt")).logits for t in texts])
    multi = problem_type == "multi_label_classification"
    want = (logits.sigmoid() if multi else logits.softmax(-1))[:, 1].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ToxicityError, match=r"no label 'hate'.*\['obscene', 'Toxic', 'insult'\]"):
        ClassifierToxicityProvider(ToxicityConfig(classifier=str(path), toxic_label="hate"))


def _perspective(server: PerspectiveServer, tmp_path, **kw) -> PerspectiveProvider:
    config = PerspectiveConfig(base_url=server.url, backoff_base_s=0.01, backoff_max_s=0.02,
                               max_retries=3, timeout_s=5.0, requests_per_minute=None, **kw)  # fmt: skip
    return PerspectiveProvider(ToxicityConfig(perspective=config), cache_uri=str(tmp_path / "c"))


def test_perspective_retries_429_5xx_and_malformed_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("PERSPECTIVE_API_KEY", "sk-perspective-secret-123")
    script = {"rate": ["429", "429", 0.7], "flaky": ["500", 0.2], "odd": ["malformed", 0.9],
              "down": ["500"], "junk": ["out_of_range"]}  # fmt: skip
    rows = _rows(["rate me", "flaky one", "odd one", "down always", "junk", "plain", None])
    with PerspectiveServer(script) as server:
        provider = _perspective(server, tmp_path)
        out = provider.score(rows)
        sent = list(server.requests)
    tox = 1.0 - out["reward"]
    assert tox[:3].round(6).tolist() == [0.7, 0.2, 0.9] and tox[5] == pytest.approx(0.1)
    causes = missing_causes(out)
    assert causes[3] == "server_error" and "HTTP 500" in out["missing_reason"][3]
    assert causes[4] == "bad_response"  # a score outside [0, 1] is malformed
    assert causes[6] == "no_generation"
    # The request format, the key in a header only, never in a URL or a reason.
    first = sent[0]
    assert first["path"] == "/v1alpha1/comments:analyze"
    assert first["body"]["requestedAttributes"] == {"TOXICITY": {}}
    assert first["body"]["comment"]["text"] and first["body"]["doNotStore"] is True
    assert all(r["headers"].get("X-Goog-Api-Key") == "sk-perspective-secret-123" for r in sent)
    assert not any("secret" in r["path"] for r in sent)
    assert not out["missing_reason"].dropna().str.contains("secret").any()
    assert provider.last_stats["retries"] >= 4
    # Too much missing fails the shard with its causes; a rerun asks only what is missing.
    with pytest.raises(FeedbackIncompleteError) as err:
        check_complete(out, 0.1, shard="iter-1-train-feedback-0", rerun="alt resume R")
    assert set(err.value.causes) == {"server_error", "bad_response"}
    with PerspectiveServer({"down": [0.3], "junk": [0.4]}) as server:
        again = _perspective(server, tmp_path).score(rows)
        asked = sorted(r["body"]["comment"]["text"] for r in server.requests)
    assert asked == ["down always", "junk"]
    assert (1.0 - again["reward"][:6]).round(6).tolist() == [0.7, 0.2, 0.9, 0.3, 0.4, 0.1]


def test_perspective_unreachable_is_a_missing_cause(tmp_path):
    config = PerspectiveConfig(base_url="http://127.0.0.1:9", max_retries=1,
                               backoff_base_s=0.01, requests_per_minute=None)  # fmt: skip
    out = PerspectiveProvider(ToxicityConfig(perspective=config)).score(_rows(["a text"]))
    assert missing_causes(out)[0] == "unreachable"


def test_toxicity_metrics_by_hand():
    # 3 prompts x 3 samples; toxicity = 1 - reward.
    tox = {0: [0.1, 0.6, 0.2], 1: [0.3, 0.4, np.nan], 2: [0.05, 0.5, 0.0]}
    df = pd.DataFrame([{"prompt_id": p, "reward": 1 - t} for p, ts in tox.items() for t in ts])
    m = toxicity_metrics(df)
    # max per prompt: 0.6, 0.4, 0.5 -> mean 0.5; prompts with a sample >= 0.5: 2 of 3.
    assert m["valid_toxicity_max_mean"] == pytest.approx(0.5)
    assert m["valid_toxicity_prob"] == pytest.approx(2 / 3)
    assert m["valid_toxicity_mean"] == pytest.approx(np.nanmean(sum(tox.values(), [])))
    assert m["valid_toxicity_max_sem"] == pytest.approx(
        np.std([0.6, 0.4, 0.5], ddof=1) / math.sqrt(3)
    )
    assert m["valid_samples_per_prompt"] == pytest.approx(8 / 3)
    full = df.assign(generation="a b c", ref_nll=1.0, ref_tokens=1, num_tokens=3)
    assert "valid_toxicity_max_mean" not in eval_metrics(full)
    assert eval_metrics(full, "toxicity")["valid_toxicity_prob"] == pytest.approx(2 / 3)
    assert eval_metrics(full, "toxicity", threshold=0.6)["valid_toxicity_prob"] == pytest.approx(
        1 / 3
    )


def test_per_generation_metrics_count_every_sample():
    # 2 prompts x 2 samples: the reward, perplexity and distinct-n are over all 4 rows.
    df = pd.DataFrame(
        {
            "prompt_id": [0, 0, 1, 1],
            "reward": [1.0, 0.0, 0.5, 0.5],
            "generation": ["a b", "a c", "d d", "a b"],
            "ref_nll": [1.0, 2.0, 3.0, 4.0],
            "ref_tokens": [1, 1, 2, 2],
            "num_tokens": [2, 2, 2, 4],
        }
    )
    m = eval_metrics(df)
    assert m["valid_reward_mean"] == pytest.approx(0.5)
    assert m["valid_reward_sem"] == pytest.approx(np.std([1, 0, 0.5, 0.5], ddof=1) / 2)
    assert m["valid_perplexity"] == pytest.approx(math.exp(10 / 6))
    assert m["valid_gen_tokens"] == pytest.approx(2.5)
    assert m["valid_distinct_1"] == pytest.approx(4 / 8)  # a, b, c, d of 8 words
    assert m["valid_distinct_2"] == pytest.approx(3 / 4)  # (a b) twice
    assert m["valid_prompts"] == 2
