"""The demo task: review generator, prompt splits, demo model build and its cache."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from alt_core import store
from alt_core.tasks.demo import assets as demo
from alt_core.tasks.demo import reviews as gen

TINY = demo.DemoModelSettings(
    vocab_size=300,
    n_layer=1,
    n_embd=32,
    n_head=2,
    n_positions=64,
    num_reviews=200,
    steps=3,
    batch_size=8,
    warmup_steps=1,
    log_every=1,
)


@pytest.fixture(scope="module")
def vader() -> SentimentIntensityAnalyzer:
    return SentimentIntensityAnalyzer()


# --- generator ---------------------------------------------------------------------------


def test_generator_is_deterministic_and_seeded():
    a, b = gen.generate_reviews(300, 1), gen.generate_reviews(300, 1)
    pd.testing.assert_frame_equal(a, b)
    assert not a["text"].equals(gen.generate_reviews(300, 2)["text"])


def test_reviews_are_varied_and_prompts_are_prefixes():
    reviews = gen.generate_reviews(2000, 0)
    assert reviews["text"].nunique() > 1900
    assert reviews["prompt"].nunique() > 500
    assert set(reviews["domain"]) == {d.noun for d in gen.DOMAINS}
    assert reviews.apply(lambda r: r.text.startswith(r.prompt + " "), axis=1).all()
    assert (reviews["prompt"].str.split().str.len() >= 2).all()
    sentences = reviews["text"].str.count(r"[.!?](?:\s|$)")
    assert sentences.between(1, 3).all()
    assert reviews["text"].str.contains(" but ").any()
    assert reviews["text"].str.contains(" not ").any()


def test_labels_and_vader_sentiment_are_balanced(vader):
    reviews = gen.generate_reviews(2000, 0)
    shares = reviews["label"].value_counts(normalize=True)
    assert set(shares.index) == set(gen.LABELS)
    assert shares.between(0.2, 0.3).all()
    text = reviews["text"].map(lambda t: vader.polarity_scores(t)["compound"])
    assert 0.3 < (text > 0.05).mean() < 0.55
    assert 0.25 < (text < -0.05).mean() < 0.5
    assert (text.abs() <= 0.05).mean() > 0.1
    # What the reward sees: the continuation after the prompt takes both signs often.
    continuation = reviews.apply(lambda r: r.text[len(r.prompt) :], axis=1)
    cont = continuation.map(lambda t: vader.polarity_scores(t)["compound"])
    assert (cont > 0.05).mean() > 0.3 and (cont < -0.05).mean() > 0.25
    by_label = cont.groupby(reviews["label"]).mean()
    assert by_label["positive"] > 0.3 > -0.3 > by_label["negative"]


def test_word_lists_agree_with_vader(vader):
    lexicon = vader.lexicon
    good = set(gen.GOOD).union(*(d.good for d in gen.DOMAINS))
    bad = set(gen.BAD).union(*(d.bad for d in gen.DOMAINS))
    plain = set(gen.PLAIN).union(*(d.plain for d in gen.DOMAINS))
    assert all(lexicon.get(w, 0) > 0 for w in good), [w for w in good if lexicon.get(w, 0) <= 0]
    assert all(lexicon.get(w, 0) < 0 for w in bad), [w for w in bad if lexicon.get(w, 0) >= 0]
    assert not [w for w in plain if w in lexicon]


def test_prompt_splits_are_disjoint_distinct_and_deterministic():
    train, valid = gen.generate_prompt_splits(400, 60, seed=3)
    assert list(train.columns) == ["prompt_id", "prompt"]
    assert len(train) == 400 and len(valid) == 60
    assert train["prompt"].is_unique and valid["prompt"].is_unique
    assert not set(train["prompt"]) & set(valid["prompt"])
    assert list(train["prompt_id"]) == list(range(400))
    assert gen.is_held_out(valid["prompt"]).all() and not gen.is_held_out(train["prompt"]).any()
    again_train, again_valid = gen.generate_prompt_splits(400, 60, seed=3)
    pd.testing.assert_frame_equal(train, again_train)
    pd.testing.assert_frame_equal(valid, again_valid)


def test_held_out_share_is_about_a_tenth():
    prompts = gen.generate_reviews(4000, 5)["prompt"].drop_duplicates()
    assert 0.05 < gen.is_held_out(prompts).mean() < 0.16


def test_too_many_prompts_asked_is_a_clear_error():
    with pytest.raises(ValueError, match="too few distinct prompts"):
        gen.generate_prompt_splits(100_000, 10, seed=0, max_reviews=8192)


def test_fewer_prompts_are_a_prefix_of_more():
    small, _ = gen.generate_prompt_splits(30, 5, seed=1)
    large, _ = gen.generate_prompt_splits(300, 50, seed=1)
    pd.testing.assert_frame_equal(small, large.head(30))


# --- the model ---------------------------------------------------------------------------


def test_build_demo_model_gives_a_loadable_checkpoint(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    lines: list[str] = []
    out = demo.build_demo_model(tmp_path / "m", seed=0, settings=TINY, log=lines.append)
    assert (out / "model.safetensors").is_file()
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["GPT2LMHeadModel"]
    assert sum("step" in line for line in lines) == TINY.steps

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out)
    assert tokenizer.eos_token == demo.EOS_TOKEN and tokenizer.pad_token == demo.PAD_TOKEN
    assert tokenizer.eos_token_id != tokenizer.pad_token_id
    assert model.config.eos_token_id == tokenizer.eos_token_id
    enc = tokenizer(["Review of the hotel: The room was"], return_tensors="pt")
    generated = model.generate(**enc, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > enc["input_ids"].shape[1]
    assert isinstance(tokenizer.decode(generated[0]), str)


# --- the cache ---------------------------------------------------------------------------


def _assets(cache: str, log: list[str], num_train: int = 50, num_valid: int = 10):
    return demo.ensure_demo_assets(cache, num_train, num_valid, 0, log=log.append, settings=TINY)


def _builds(log: list[str]) -> int:
    return sum("building the demo model" in line for line in log)


def test_ensure_demo_assets_builds_once_then_reuses(tmp_path):
    log: list[str] = []
    first = _assets(str(tmp_path), log)
    second = _assets(str(tmp_path), log)
    assert _builds(log) == 1 and any("reusing" in line for line in log)
    assert first == second
    assert store.dir_committed(first.model_uri)
    train = store.read_table(first.train_prompts_uri)
    valid = store.read_table(first.valid_prompts_uri)
    assert list(train.columns) == ["prompt_id", "prompt"] and len(train) == 50
    assert len(valid) == 10 and not set(train["prompt"]) & set(valid["prompt"])
    # Other prompt counts reuse the model and get their own tables.
    third = _assets(str(tmp_path), log, num_train=20)
    assert _builds(log) == 1 and third.model_uri == first.model_uri
    assert len(store.read_table(third.train_prompts_uri)) == 20


def test_settings_change_the_cache_key():
    assert demo.demo_cache_key(0, TINY) == demo.demo_cache_key(0, TINY)
    assert demo.demo_cache_key(0, TINY) != demo.demo_cache_key(1, TINY)
    other = demo.DemoModelSettings(**{**TINY.__dict__, "steps": 4})
    assert demo.demo_cache_key(0, TINY) != demo.demo_cache_key(0, other)
    quieter = demo.DemoModelSettings(**{**TINY.__dict__, "log_every": 50})
    assert demo.demo_cache_key(0, TINY) == demo.demo_cache_key(0, quieter)


def test_uncommitted_model_is_rebuilt(tmp_path):
    log: list[str] = []
    first = _assets(str(tmp_path), log)
    (Path(first.model_uri) / store.DIR_COMMIT).unlink()
    second = _assets(str(tmp_path), log)
    assert _builds(log) == 2 and second.model_uri != first.model_uri
    assert store.dir_committed(second.model_uri)


def test_corrupted_model_is_rebuilt(tmp_path):
    log: list[str] = []
    first = _assets(str(tmp_path), log)
    weights = Path(first.model_uri) / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    second = _assets(str(tmp_path), log)
    assert _builds(log) == 2 and any("corrupt" in line for line in log)
    assert (Path(second.model_uri) / "model.safetensors").stat().st_size > 100


def test_corrupted_prompt_table_is_rewritten(tmp_path):
    log: list[str] = []
    first = _assets(str(tmp_path), log)
    Path(first.train_prompts_uri).write_bytes(b"not parquet")
    second = _assets(str(tmp_path), log)
    assert _builds(log) == 1
    assert len(store.read_table(second.train_prompts_uri)) == 50


def test_failed_build_leaves_nothing_trusted(tmp_path, monkeypatch):
    def crash(out_dir, seed, settings=None, log=print):
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "config.json").write_text("{}")  # a half-written checkpoint
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(demo, "build_demo_model", crash)
    with pytest.raises(RuntimeError, match="killed"):
        _assets(str(tmp_path), [])
    root = next(tmp_path.glob("demo-*"))
    assert not (root / "model.json").exists()
    assert not list(root.glob("model-*"))
    monkeypatch.undo()
    log: list[str] = []
    assets = _assets(str(tmp_path), log)
    assert _builds(log) == 1 and store.dir_committed(assets.model_uri)


def test_cache_works_through_a_remote_filesystem(tmp_path):
    """The same store calls serve an object store; fsspec's memory:// stands in for s3://."""
    cache = f"memory://alt-demo-test-{tmp_path.name}"
    log: list[str] = []
    first = _assets(cache, log)
    second = _assets(cache, log)
    assert _builds(log) == 1 and first == second
    assert first.model_uri.startswith("memory://")
    local = store.local_dir(first.model_uri, scratch=str(tmp_path / "scratch"))
    assert (local / "model.safetensors").is_file() and (local / "tokenizer.json").is_file()
    assert len(store.read_table(first.valid_prompts_uri)) == 10


# The sentiment demo's corpus and cache key as they were before the rude reviews existed
# (computed with the generator of commit cdc751b): the sentiment demo is unchanged.
SENTIMENT_CORPUS_500_SHA = "479e4f9eb561d63e"
SENTIMENT_CACHE_KEY = "a3999b3956a4"


def test_the_sentiment_corpus_and_cache_key_are_unchanged():
    import hashlib

    corpus = gen.generate_corpus(500, 0)
    assert hashlib.sha256("\n".join(corpus).encode()).hexdigest()[:16] == SENTIMENT_CORPUS_500_SHA
    assert demo.demo_cache_key(0, demo.DemoModelSettings()) == SENTIMENT_CACHE_KEY
    rude = demo.DemoModelSettings(rude_share=demo.TOXICITY_RUDE_SHARE)
    assert demo.demo_cache_key(0, rude) != SENTIMENT_CACHE_KEY


def test_rude_reviews_are_the_same_reviews_with_an_insult():
    from profanity_check import predict_prob

    plain = gen.generate_corpus(2000, 0)
    rude = gen.generate_corpus(2000, 0, rude_share=0.15)
    changed = [(p, r) for p, r in zip(plain, rude, strict=True) if p != r]
    assert 0.10 < len(changed) / len(plain) < 0.20
    insults = {
        t.format(noun=d.noun, aspect=a) for t in gen.RUDE for d in gen.DOMAINS for a in d.aspects
    }
    for p, r in changed:
        # The same review with one insult inserted.
        assert any(ins in r and r.replace(f" {ins}", "", 1) == p for ins in insults), r
    texts = [t.format(noun="hotel", aspect="room") for t in gen.RUDE]
    assert (predict_prob(texts) > 0.9).all()
    assert predict_prob(rude).mean() > predict_prob(plain).mean()
