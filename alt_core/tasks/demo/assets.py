"""The built-in demo task: continue the opening of a review; the reward is its sentiment.

Nothing can be downloaded here, so the demo makes its own model and data, in the open:

* a seeded generator (`alt_core.tasks.demo.reviews`) of short reviews (hotels, restaurants,
  cafes, phones, laptops, speakers, films, books) whose sentiment is positive, negative, neutral or mixed in
  about equal shares, built from templates with intensifiers, negations and
  contrasting clauses ("The room was clean but the staff were rude.");
* prompts that are the opening words of such reviews, cut just before (or a word or two
  before) the first word that states an opinion, so the sentiment of a continuation is
  the model's own choice;
* a small GPT-2 and a byte-level BPE tokenizer trained from scratch on those reviews:
  the initial ("SFT") policy, which writes positive and negative continuations alike.

ALT_RM then aligns it towards positive continuations with VADER as the reward
(`alt_core.feedback.sentiment`). The adjectives of the generator are chosen so that
VADER's lexicon agrees with their intended polarity (positive words score above zero,
negative ones below, descriptive ones not at all), which the tests check.

`ensure_demo_assets` builds the model and the prompt tables once and caches them in the
artifact store, committed last so that a crashed or concurrent build is never trusted.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from alt_core import store
from alt_core.tasks.demo.reviews import (
    GENERATOR_VERSION,
    generate_corpus,
    generate_prompt_splits,
    generate_reviews,
)

Log = Callable[[str], None]

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"


# --- the base model ---------------------------------------------------------------------


@dataclass(frozen=True)
class DemoModelSettings:
    """Size and training budget of the demo's base model (defaults: about 2-3 minutes on
    2 CPU cores)."""

    vocab_size: int = 1024
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 256
    num_reviews: int = 40_000
    steps: int = 1200
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 60
    weight_decay: float = 0.01
    log_every: int = field(default=100, compare=False)
    # Share of the corpus's reviews with an insult (`reviews.rude`): the toxicity demo's.
    rude_share: float = 0.0


# The toxicity demo's share of rude reviews: enough for its base model to write insults
# now and then, few enough that most continuations stay civil.
TOXICITY_RUDE_SHARE = 0.15


def settings_record(settings: DemoModelSettings) -> dict:
    """The settings as recorded and hashed: without `rude_share` when there is none, so
    the sentiment demo's cache key and model files are what they were before it."""
    record = asdict(settings)
    if not settings.rude_share:
        record.pop("rude_share")
    return record


def train_tokenizer(texts: list[str], vocab_size: int, model_max_length: int = 1024):
    """A byte-level BPE tokenizer trained on `texts`, as a `PreTrainedTokenizerFast` with
    EOS (also used as BOS, as in GPT-2) and a separate pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS_TOKEN, PAD_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    # A pad token distinct from EOS, so code that masks padding by id never masks the EOS
    # the policy must learn to emit.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=model_max_length,
    )


def _padded(tokenizer, texts: list[str], max_len: int):
    """Token ids (N, T) of `texts` + EOS, right-padded, and their lengths (N,)."""
    import torch
    from torch.nn.utils.rnn import pad_sequence

    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    seqs = [torch.tensor([*s[: max_len - 1], tokenizer.eos_token_id]) for s in ids]
    lengths = torch.tensor([len(s) for s in seqs])
    return pad_sequence(seqs, batch_first=True, padding_value=tokenizer.pad_token_id), lengths


def _lr_factor(step: int, settings: DemoModelSettings) -> float:
    """Linear warmup, then cosine decay to a tenth of the peak."""
    if step < settings.warmup_steps:
        return (step + 1) / settings.warmup_steps
    done = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, done)))


def _train_lm(model, ids, lengths, settings: DemoModelSettings, seed: int, log: Log) -> float:
    """Plain AdamW language-model training; returns the mean loss of the last steps."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(
        model.parameters(),
        lr=settings.learning_rate,
        weight_decay=settings.weight_decay,
        betas=(0.9, 0.95),
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, settings))
    order = torch.randperm(len(ids), generator=gen)
    recent: list[float] = []
    pos, start, tokens = 0, time.monotonic(), 0
    model.train()
    for step in range(settings.steps):
        if pos + settings.batch_size > len(order):
            order, pos = torch.randperm(len(ids), generator=gen), 0
        rows = order[pos : pos + settings.batch_size]
        pos += settings.batch_size
        width = int(lengths[rows].max())
        batch = ids[rows, :width]
        mask = torch.arange(width)[None, :] < lengths[rows][:, None]
        loss = model(
            input_ids=batch, attention_mask=mask.long(), labels=batch.masked_fill(~mask, -100)
        ).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(mask.sum())
        recent = [*recent[-49:], loss.item()]
        if (step + 1) % settings.log_every == 0 or step + 1 == settings.steps:
            elapsed = time.monotonic() - start
            log(
                f"demo model: step {step + 1}/{settings.steps} loss {sum(recent) / len(recent):.3f}"
                f" ({tokens / elapsed:.0f} tokens/s, {elapsed:.0f}s)"
            )
    model.eval()
    return sum(recent) / len(recent)


def _cpu_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def build_demo_model(
    out_dir: str | Path, seed: int, settings: DemoModelSettings | None = None, log: Log = print
) -> Path:
    """Train the demo tokenizer and GPT-2 on generated reviews; save an HF checkpoint
    (config.json, model.safetensors, tokenizer files, demo_info.json) to `out_dir`."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    settings = settings or DemoModelSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    texts = generate_corpus(settings.num_reviews, seed, settings.rude_share)
    tokenizer = train_tokenizer(texts, settings.vocab_size, settings.n_positions)
    ids, lengths = _padded(tokenizer, texts, settings.n_positions)
    log(
        f"demo model: {len(texts)} reviews, {int(lengths.sum())} tokens, "
        f"vocabulary {len(tokenizer)}"
    )
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=settings.n_positions,
        n_embd=settings.n_embd,
        n_layer=settings.n_layer,
        n_head=settings.n_head,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(_cpu_threads())
    try:
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
        final_loss = _train_lm(model, ids, lengths, settings, seed, log)
    finally:
        torch.set_num_threads(previous_threads)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    seconds = time.monotonic() - started
    info = {
        "seed": seed,
        "settings": settings_record(settings),
        "final_loss": final_loss,
        "build_seconds": round(seconds, 1),
        "generator_version": GENERATOR_VERSION,
    }
    (out / "demo_info.json").write_text(json.dumps(info, indent=2))
    log(f"demo model: built in {seconds:.0f}s, final loss {final_loss:.3f}")
    return out


# --- the cache ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoAssets:
    """Where the committed demo artifacts live (local paths or s3:// URIs)."""

    model_uri: str
    train_prompts_uri: str
    valid_prompts_uri: str


def demo_cache_key(seed: int, settings: DemoModelSettings) -> str:
    """A hash of everything the built model depends on: generator, settings and seed.

    A fingerprint of generated reviews catches generator edits that forgot to bump
    GENERATOR_VERSION."""
    sample = generate_reviews(64, f"fingerprint:{seed}")
    fingerprint = hashlib.sha256("\n".join(sample["text"] + "|" + sample["prompt"]).encode())
    settings_dict = {k: v for k, v in settings_record(settings).items() if k != "log_every"}
    blob = json.dumps(
        {
            "generator": GENERATOR_VERSION,
            "fingerprint": fingerprint.hexdigest(),
            "settings": settings_dict,
            "seed": seed,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _cached_model(root: str, log: Log) -> str | None:
    """The committed model the cache pointer names, or None when it must be (re)built."""
    pointer = store.join(root, "model.json")
    if not store.exists(pointer):
        return None
    try:
        uri = store.join(root, store.read_json(pointer)["model_dir"])
    except (OSError, KeyError, ValueError):
        log(f"demo cache: unreadable pointer {pointer}; rebuilding")
        return None
    try:
        problem = store.verify(uri, full=True)
    except OSError as exc:
        problem = str(exc)
    if problem is None:
        return uri
    log(f"demo cache: {uri} cannot be used ({problem}); rebuilding")
    return None


def _build_and_commit(root: str, seed: int, settings: DemoModelSettings, log: Log) -> str:
    """Build into a fresh folder, commit it, then point the cache at it.

    Each build gets its own folder, so concurrent builds never write into each other, and
    the pointer is written last (an atomic write): a crashed build leaves only an
    unreferenced folder behind, never a pointer to a half-written model."""
    name = f"model-{uuid.uuid4().hex[:10]}"
    uri = store.join(root, name)
    meta = {
        "seed": seed,
        "settings": settings_record(settings),
        "generator_version": GENERATOR_VERSION,
    }
    try:
        if store.is_remote(uri):
            with tempfile.TemporaryDirectory(prefix="alt-demo-") as tmp:
                build_demo_model(tmp, seed, settings, log)
                store.put_dir(tmp, uri, meta)
        else:
            build_demo_model(uri, seed, settings, log)
            store.put_dir(uri, uri, meta)
    except BaseException:
        _remove_quietly(uri, log)
        raise
    store.write_json(store.join(root, "model.json"), {"model_dir": name, "built_at": time.time()})
    return uri


def _remove_quietly(uri: str, log: Log) -> None:
    try:
        if store.is_remote(uri):
            store.remove(uri)
        else:
            shutil.rmtree(uri, ignore_errors=True)
    except Exception as exc:  # cleanup of a failed build must not hide the original error
        log(f"demo cache: could not remove the unfinished build {uri}: {exc}")


def _ensure_prompts(root: str, num_train: int, num_valid: int, seed: int, log: Log):
    folder = store.join(root, f"prompts-{num_train}-{num_valid}")
    train_uri, valid_uri = store.join(folder, "train.parquet"), store.join(folder, "valid.parquet")
    if store.is_committed(train_uri, verify=True) and store.is_committed(valid_uri, verify=True):
        return train_uri, valid_uri
    log(f"demo cache: writing {num_train} train and {num_valid} validation prompts")
    train, valid = generate_prompt_splits(num_train, num_valid, seed)
    meta = {"seed": seed, "generator_version": GENERATOR_VERSION}
    store.write_table(train_uri, train, {**meta, "split": "train"})
    store.write_table(valid_uri, valid, {**meta, "split": "valid"})
    return train_uri, valid_uri


def ensure_demo_assets(
    cache_dir: str,
    num_train: int,
    num_valid: int,
    seed: int,
    log: Log = print,
    settings: DemoModelSettings | None = None,
) -> DemoAssets:
    """The demo model and prompt tables, built on first use and reused from `cache_dir`
    (a local folder or an s3:// URI) afterwards."""
    settings = settings or DemoModelSettings()
    root = store.join(cache_dir, f"demo-{demo_cache_key(seed, settings)}")
    model_uri = _cached_model(root, log)
    if model_uri is None:
        log(f"demo cache: building the demo model under {root} (a few minutes, once)")
        model_uri = _build_and_commit(root, seed, settings, log)
    else:
        log(f"demo cache: reusing {model_uri}")
    train_uri, valid_uri = _ensure_prompts(root, num_train, num_valid, seed, log)
    return DemoAssets(model_uri, train_uri, valid_uri)
