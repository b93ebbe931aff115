"""The built-in demo task: continue the opening of a review; the reward is its sentiment.

Nothing can be downloaded here, so the demo makes its own model and data, in the open:

* a seeded generator of short reviews (hotels, restaurants, cafes, phones, laptops,
  speakers, films, books) whose sentiment is positive, negative, neutral or mixed in
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
import random
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from alt_core import store

Log = Callable[[str], None]

# Bump when the generator changes in a way the fingerprint in `demo_cache_key` could miss.
GENERATOR_VERSION = 1
EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
LABELS = ("positive", "negative", "neutral", "mixed")
# Share of the prompt space (by a hash of the prompt text) held out for validation; the
# base model never sees a review that opens with a held-out prompt.
HELD_OUT_PER_256 = 26
PROMPT_CHUNK = 4096

# --- vocabulary -------------------------------------------------------------------------
# Word lists are data: kept compact rather than one word per line.
# fmt: off

GOOD = ("great", "excellent", "wonderful", "lovely", "fantastic", "amazing", "superb", "good",
        "nice", "pleasant", "perfect", "impressive", "delightful", "brilliant", "outstanding")
BAD = ("terrible", "awful", "horrible", "poor", "bad", "disappointing", "dreadful", "lousy",
       "annoying", "useless", "weak", "unpleasant", "pathetic")
# Descriptive words VADER does not score: they make neutral reviews and lukewarm clauses.
PLAIN = ("average", "ordinary", "standard", "typical", "simple", "basic")
BOOST = ("very", "really", "extremely", "incredibly", "absolutely", "quite", "so", "truly")
DAMPEN = ("a bit", "slightly", "somewhat", "rather")
PLURAL = {"staff", "towels", "portions", "prices", "speakers", "characters", "special effects",
          "pastries"}
NUMBERS = ("two", "three", "four", "five", "six")
MONTHS = ("January", "March", "April", "June", "July", "August", "October", "December")
DAYS = ("Monday", "Tuesday", "Friday", "Saturday", "Sunday")
COMPANIONS = ("my sister", "a friend", "my parents", "my wife", "my husband", "my kids",
              "a colleague", "my brother")


@dataclass(frozen=True)
class _Domain:
    noun: str
    product: bool  # products are described in the present tense, places and works in the past
    names: tuple[str, ...]
    aspects: tuple[str, ...]
    good: tuple[str, ...]  # VADER-positive words that fit this domain
    bad: tuple[str, ...]  # VADER-negative words that fit this domain
    plain: tuple[str, ...]  # descriptive words VADER does not score
    facts: tuple[str, ...]  # neutral sentences; {name} {n} {month} {day} {companion}


DOMAINS = (
    _Domain("hotel", False,
            ("Hotel Marina", "the Grand Plaza", "the Old Mill Inn", "Seaview Lodge",
             "the Park Hotel", "Hotel Aurora", "the Riverside Inn", "Casa Verde"),
            ("room", "bed", "staff", "breakfast", "pool", "view", "location", "bathroom", "wifi",
             "lobby", "receptionist", "towels"),
            ("clean", "comfortable", "friendly", "helpful", "welcoming", "beautiful", "charming"),
            ("dirty", "uncomfortable", "noisy", "rude", "broken", "careless"),
            ("spacious", "small", "modern", "quiet", "cramped", "busy"),
            ("We stayed at {name} for {n} nights.", "I stayed here in {month}.",
             "We booked a room for the weekend.", "I was here for a conference in {month}.")),
    _Domain("restaurant", False,
            ("Luigi's", "the Blue Door", "Golden Dragon", "Casa Maria", "the Corner Bistro",
             "Spice Garden", "the Olive Tree"),
            ("food", "service", "waiter", "pasta", "dessert", "soup", "pizza", "steak", "menu",
             "atmosphere", "wine", "portions", "prices"),
            ("delicious", "fresh", "yummy", "friendly", "generous", "lively", "rich"),
            ("disgusting", "rude", "nasty", "gross", "bitter", "careless"),
            ("spicy", "salty", "hot", "busy", "expensive", "cheap", "small"),
            ("We had dinner at {name} last {day}.", "I came here for lunch with {companion}.",
             "We ate here on {day} night.", "I booked a table for {n} people.")),
    _Domain("cafe", False,
            ("Bean There", "the Daily Grind", "Cafe Lumen", "Morning Cup", "the Little Kettle"),
            ("coffee", "cake", "barista", "croissant", "tea", "music", "seating", "cappuccino",
             "pastries"),
            ("fresh", "friendly", "sweet", "warm", "cheerful", "rich", "welcoming"),
            ("bitter", "rude", "dirty", "disgusting", "lazy", "noisy"),
            ("hot", "busy", "small", "loud", "dark", "cheap"),
            ("I stopped here on a {day} morning.", "I met {companion} here for coffee.",
             "I work from this cafe sometimes.")),
    _Domain("phone", True,
            ("the Nova X2", "the Zephyr Pro", "the Pulse 5", "the Orbit Mini", "the Lumen S"),
            ("battery", "screen", "camera", "speaker", "charger", "software", "case",
             "fingerprint sensor", "price"),
            ("clear", "powerful", "responsive", "stunning", "smart", "bright", "elegant"),
            ("faulty", "broken", "sluggish", "frustrating", "blurry", "distorted"),
            ("heavy", "light", "thin", "big", "small", "slow", "fast"),
            ("I bought it in {month}.", "I have used it for {n} weeks.",
             "I got it as a gift from {companion}.", "It arrived on {day}.")),
    _Domain("laptop", True,
            ("the Aero 14", "the Vertex Book", "the Slate Pro", "the Kite 13"),
            ("keyboard", "screen", "battery", "trackpad", "fan", "speakers", "charger", "hinge"),
            ("powerful", "responsive", "bright", "comfortable", "clear", "elegant"),
            ("faulty", "broken", "sluggish", "frustrating", "loose", "noisy"),
            ("heavy", "light", "thin", "big", "loud", "slow", "fast"),
            ("I bought it for work in {month}.", "I have used it for {n} months.",
             "I use it mostly for school.")),
    _Domain("speaker", True,
            ("the SoundWave 3", "the Echo Air", "the Boom Mini", "the Drift Pro"),
            ("sound", "bass", "volume", "battery", "app", "charging port", "design",
             "microphone"),
            ("rich", "clear", "powerful", "strong", "beautiful", "smart"),
            ("distorted", "weak", "faulty", "broken", "frustrating", "useless"),
            ("heavy", "light", "loud", "deep", "small", "big"),
            ("I bought it in {month}.", "I take it to the beach every {day}.",
             "I have used it for {n} weeks.")),
    _Domain("film", False,
            ("The Silent River", "Midnight Harbor", "Paper Moons", "The Last Orchard",
             "Blue Summer"),
            ("plot", "acting", "ending", "soundtrack", "dialogue", "cast", "script", "pacing",
             "villain", "special effects"),
            ("thrilling", "hilarious", "exciting", "engaging", "beautiful", "funny", "inspiring"),
            ("boring", "dull", "confusing", "stupid", "painful", "dreary"),
            ("long", "slow", "dark", "quiet", "predictable", "short"),
            ("I watched it with {companion} on {day}.", "We saw it at the cinema last {day}.",
             "I streamed it at home.", "It runs for about {n} hours.")),
    _Domain("book", False,
            ("The Glass Garden", "A Winter Letter", "The Cartographer", "Salt and Stone",
             "Northern Lights"),
            ("story", "characters", "ending", "writing", "plot", "cover", "first chapter",
             "dialogue"),
            ("compelling", "engaging", "beautiful", "clever", "inspiring", "satisfying",
             "original"),
            ("boring", "dull", "confusing", "awkward", "weak", "dreary"),
            ("long", "short", "slow", "dense", "dark", "quiet"),
            ("I read it on holiday in {month}.", "It took me {n} days to finish.",
             "{companion} lent it to me.")),
)

HEADERS = ("Review of {name}:", "{Noun} review:", "My thoughts on {name}:", "Review:")
LIKE = ("loved", "liked", "enjoyed", "adored", "really liked")
DISLIKE = ("hated", "disliked", "did not like", "did not enjoy", "could not stand")
EXCLAIM_GOOD = ("Highly recommended!", "Loved it!", "Five stars, great value.",
                "Worth every penny.", "Best {noun} in town!", "What a delight.")
EXCLAIM_BAD = ("Avoid!", "What a waste of money.", "Never again, what a disappointment.",
               "Total disaster.", "Worst {noun} ever.", "What a mess.")
# fmt: on

# --- the review generator ---------------------------------------------------------------


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _value(rng: random.Random, dom: _Domain, pol: int) -> list[str]:
    """The evaluative words of a clause: an adjective with an optional modifier."""
    if pol > 0:
        adj = rng.choice(dom.good if rng.random() < 0.5 else GOOD)
        return ([rng.choice(BOOST)] if rng.random() < 0.4 else []) + [adj]
    if pol < 0:
        if rng.random() < 0.1:  # negated praise: "not clean", "not very good", "never clean"
            adj = rng.choice(dom.good if rng.random() < 0.5 else GOOD)
            if rng.random() < 0.4:
                return ["never", adj]
            return ["not", *(["very"] if rng.random() < 0.25 else []), adj]
        adj = rng.choice(dom.bad if rng.random() < 0.5 else BAD)
        r = rng.random()
        mod = [rng.choice(BOOST)] if r < 0.35 else [rng.choice(DAMPEN)] if r < 0.5 else []
        return [*mod, adj]
    adj = rng.choice(dom.plain if rng.random() < 0.6 else PLAIN)
    return ([rng.choice(DAMPEN)] if rng.random() < 0.3 else []) + [adj]


def _subject(rng: random.Random, dom: _Domain, whole: bool) -> tuple[str, bool]:
    """A clause subject and whether it is plural: an aspect, or the item as a whole."""
    if whole:
        options = [f"this {dom.noun}", rng.choice(dom.names)]
        if dom.product:
            options.append(f"my new {dom.noun}")
        return rng.choice(options), False
    aspect = rng.choice(dom.aspects)
    return f"the {aspect}", aspect in PLURAL


def _clause(rng: random.Random, dom: _Domain, pol: int, whole: bool = False) -> tuple[list, int]:
    subject, plural = _subject(rng, dom, whole)
    verb = ("are" if plural else "is") if dom.product else ("were" if plural else "was")
    words = [*subject.split(), verb]
    return words + _value(rng, dom, pol), len(words)


def _end(words: list[str], mark: str = ".") -> list[str]:
    return [*words[:-1], words[-1] + mark]


def _sentence(rng: random.Random, dom: _Domain, kind: str, pol: int) -> tuple[list, int | None]:
    """One sentence as words, and the index where its evaluative part starts (None if the
    sentence has none, like a neutral fact)."""
    if kind == "fact":
        text = rng.choice(dom.facts).format(
            name=rng.choice(dom.names),
            n=rng.choice(NUMBERS),
            month=rng.choice(MONTHS),
            day=rng.choice(DAYS),
            companion=rng.choice(COMPANIONS),
        )
        return _cap(text).split(), None
    if kind == "exclaim":
        pool = EXCLAIM_GOOD if pol > 0 else EXCLAIM_BAD
        return rng.choice(pool).format(noun=dom.noun).split(), None
    if kind == "verb" and pol != 0:
        verb = rng.choice(LIKE if pol > 0 else DISLIKE)
        return [rng.choice(("I", "We")), *verb.split(), "the", *_end([rng.choice(dom.aspects)])], 1
    if kind == "overall":
        # "a very good hotel", not "an a bit good" or "a quite good hotel"
        value = [w for w in _value(rng, dom, pol) if w not in ("a bit", "quite", "so")]
        article = "an" if value[0][0] in "aeiou" else "a"
        return ["Overall,", "it", "was", article, *value, dom.noun + "."], 3
    if kind == "recommend" and pol != 0:
        obj = rng.choice(("it", f"this {dom.noun}", rng.choice(dom.names)))
        adv = (
            rng.choice(("definitely", "happily", "highly", ""))
            if pol > 0
            else rng.choice(("not", "never"))
        )
        return ["I", "would", *adv.split(), "recommend", *_end(obj.split())], 2
    if kind == "contrast":
        second = -pol if pol != 0 else rng.choice((-1, 1))
        first, slot = _clause(rng, dom, pol, whole=rng.random() < 0.2)
        other, _ = _clause(rng, dom, second)
        if rng.random() < 0.3:
            return [_cap("although"), *_end(first, ","), *_end(other)], slot + 1
        return [*_end(first, ","), "but", *_end(other)], slot
    words, slot = _clause(rng, dom, pol, whole=rng.random() < 0.2)
    if kind == "and":
        other, _ = _clause(rng, dom, pol)
        words = [*words, "and", *other]
    return _end(words), slot


def _polarities(rng: random.Random, label: str, n: int) -> list[int]:
    if label == "neutral":
        return [0] * n
    if label == "mixed":
        pols = [rng.choice((-1, 1)) for _ in range(n)]
        if n > 1 and len(set(pols)) == 1:
            pols[rng.randrange(1, n)] *= -1
        return pols
    sign = 1 if label == "positive" else -1
    pols = [sign] * n
    if n > 1 and rng.random() < 0.25:  # a lukewarm aside in an otherwise clear review
        pols[rng.randrange(1, n)] = 0
    return pols


def _kind(rng: random.Random, label: str, pol: int, first: bool, last: bool) -> str:
    if label == "mixed" and (first or rng.random() < 0.3):
        return "contrast"
    if pol == 0:
        return rng.choice(("simple", "simple", "and", "overall"))
    kinds = ["simple"] * 4 + ["and"] * 2 + ["verb", "overall"]
    if not first:
        kinds += ["verb", "exclaim"] + ["recommend"] * (3 if last else 0)
    return rng.choice(kinds)


def _review(rng: random.Random) -> tuple[str, str, str, str]:
    """One review: (text, prompt, label, domain)."""
    dom = rng.choice(DOMAINS)
    label = rng.choice(LABELS)
    n = rng.choice((1, 2, 2, 3, 3))
    pols = _polarities(rng, label, n)
    words: list[str] = []
    slot: int | None = None
    if n < 3 and rng.random() < 0.25:
        words += _sentence(rng, dom, "fact", 0)[0]
    for i, pol in enumerate(pols):
        sent, sent_slot = _sentence(rng, dom, _kind(rng, label, pol, i == 0, i == n - 1), pol)
        sent[0] = _cap(sent[0])
        if slot is None and sent_slot is not None:
            slot = len(words) + sent_slot
        words += sent
    assert slot is not None, "every review has an evaluative first sentence"
    if slot < 2 or rng.random() < 0.45:
        header = rng.choice(HEADERS).format(name=rng.choice(dom.names), Noun=_cap(dom.noun))
        words = [*header.split(), *words]
        slot += len(header.split())
    # Cut at the evaluative slot, sometimes a word or two earlier, never below two words.
    cut = max(2, slot - rng.choices((0, 1, 2), weights=(6, 3, 1))[0])
    return " ".join(words), " ".join(words[:cut]), label, dom.noun


def iter_reviews(seed: int | str) -> Iterator[tuple[str, str, str, str]]:
    """An endless, seeded stream of (text, prompt, label, domain)."""
    rng = random.Random(f"alt-demo-reviews:{seed}")
    while True:
        yield _review(rng)


def generate_reviews(n: int, seed: int | str) -> pd.DataFrame:
    """`n` reviews with columns text, prompt, label, domain (deterministic in `seed`)."""
    stream = iter_reviews(seed)
    rows = [next(stream) for _ in range(n)]
    return pd.DataFrame(rows, columns=["text", "prompt", "label", "domain"])


def is_held_out(prompts: pd.Series) -> pd.Series:
    """Whether each prompt text belongs to the validation share of the prompt space.

    A content hash (not Python's salted `hash`) keeps the split stable across processes.
    """
    digest = prompts.map(lambda p: hashlib.blake2b(p.encode(), digest_size=1).digest()[0])
    return digest < HELD_OUT_PER_256


def generate_prompt_splits(
    num_train: int, num_valid: int, seed: int, max_reviews: int | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Distinct train and validation prompts (columns prompt_id, prompt), disjoint texts.

    Reviews are drawn in fixed chunks, so a smaller request gets a prefix of a larger
    one. Gives up after `max_reviews` draws (default: 50 per prompt asked for)."""
    max_reviews = max_reviews or 50 * (num_train + num_valid) + 100_000
    prompts, held = pd.Series([], dtype=object), pd.Series([], dtype=bool)
    drawn = 0
    while int((~held).sum()) < num_train or int(held.sum()) < num_valid:
        if drawn >= max_reviews:
            raise ValueError(
                f"the demo generator gave too few distinct prompts for {num_train} train and "
                f"{num_valid} validation prompts in {drawn} reviews; lower "
                f"data.demo_num_train / data.demo_num_valid"
            )
        new = generate_reviews(PROMPT_CHUNK, f"prompts:{seed}:{drawn}")["prompt"]
        new = new.drop_duplicates()
        new = new[~new.isin(prompts)]
        prompts = pd.concat([prompts, new], ignore_index=True)
        held = pd.concat([held, is_held_out(new)], ignore_index=True)
        drawn += PROMPT_CHUNK

    def table(texts: pd.Series) -> pd.DataFrame:
        return pd.DataFrame({"prompt_id": range(len(texts)), "prompt": texts.tolist()})

    return table(prompts[~held].head(num_train)), table(prompts[held].head(num_valid))


def generate_corpus(num_reviews: int, seed: int) -> list[str]:
    """Training texts for the base model: reviews whose prompt is not held out."""
    out: list[str] = []
    attempt = 0
    while len(out) < num_reviews:
        reviews = generate_reviews(num_reviews, f"corpus:{seed}:{attempt}")
        keep = reviews.loc[~is_held_out(reviews["prompt"]), "text"]
        out.extend(keep.tolist()[: num_reviews - len(out)])
        attempt += 1
    return out


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
    texts = generate_corpus(settings.num_reviews, seed)
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
        "settings": asdict(settings),
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
    settings_dict = {k: v for k, v in asdict(settings).items() if k != "log_every"}
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


def _dir_intact(uri: str) -> bool:
    """A committed folder whose files all match the hashes in its commit manifest."""
    if not store.dir_committed(uri):
        return False
    try:
        manifest = store.read_json(store.join(uri, store.DIR_COMMIT))
        return bool(manifest["files"]) and all(
            hashlib.sha256(store.read_bytes(store.join(uri, rel))).hexdigest() == digest
            for rel, digest in manifest["files"].items()
        )
    except (OSError, KeyError, ValueError):
        return False


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
    if _dir_intact(uri):
        return uri
    log(f"demo cache: {uri} is uncommitted or corrupt; rebuilding")
    return None


def _build_and_commit(root: str, seed: int, settings: DemoModelSettings, log: Log) -> str:
    """Build into a fresh folder, commit it, then point the cache at it.

    Each build gets its own folder, so concurrent builds never write into each other, and
    the pointer is written last (an atomic write): a crashed build leaves only an
    unreferenced folder behind, never a pointer to a half-written model."""
    name = f"model-{uuid.uuid4().hex[:10]}"
    uri = store.join(root, name)
    meta = {"seed": seed, "settings": asdict(settings), "generator_version": GENERATOR_VERSION}
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
