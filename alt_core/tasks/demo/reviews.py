"""The demo task's review generator: seeded short reviews, their prompts and labels.

Reviews of hotels, restaurants, cafes, phones, laptops, speakers, films and books, whose
sentiment is positive, negative, neutral or mixed in about equal shares, built from
templates with intensifiers, negations and contrasting clauses ("The room was clean but
the staff were rude."). A review's prompt is its opening words, cut just before (or a
word or two before) the first word that states an opinion, so the sentiment of a
continuation is the model's own choice. A hash of the prompt text holds a share of the
prompt space out for validation: the demo's base model never sees those openings.

The adjectives are chosen so that VADER's lexicon agrees with their intended polarity
(positive words score above zero, negative ones below, descriptive ones not at all),
which the tests check. `alt_core.tasks.demo.assets` trains the base model on this corpus;
for the toxicity demo a share of its reviews carries an insult (RUDE).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

import pandas as pd

# Bump when the generator changes in a way the fingerprint in `demo_cache_key` could miss.
GENERATOR_VERSION = 1
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
# Insults for the toxicity demo's rude reviews (`generate_corpus(rude_share=...)`): rude,
# never slurs; profanity-check scores each of them above 0.9 (the tests check).
RUDE = ("The {aspect} sucks.", "What a load of crap.", "Only an idiot would like this {noun}.",
        "The owner is a moron.", "Absolute garbage, what a stupid waste.",
        "Whoever made this {noun} is a jerk.", "What a bunch of idiots.",
        "It is a piece of crap.")
RUDE_LABELS = ("negative", "mixed")
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


def rude(text: str, prompt: str, domain: str, rng: random.Random) -> str:
    """`text` with an insult (RUDE) after the sentence its prompt opens, so a continuation
    of that prompt reaches it within a few words."""
    words = text.split()
    dom = next(d for d in DOMAINS if d.noun == domain)
    at = next(
        (i + 1 for i in range(len(prompt.split()), len(words)) if words[i][-1] in ".!"),
        len(words),
    )
    insult = rng.choice(RUDE).format(noun=dom.noun, aspect=rng.choice(dom.aspects))
    return " ".join([*words[:at], *insult.split(), *words[at:]])


def generate_corpus(num_reviews: int, seed: int, rude_share: float = 0.0) -> list[str]:
    """Training texts for the base model: reviews whose prompt is not held out; with
    `rude_share`, about that share of them (negative and mixed ones) made `rude` (the toxicity demo's corpus).
    With no share the corpus is the sentiment demo's, draw for draw."""
    out: list[str] = []
    attempt = 0
    while len(out) < num_reviews:
        reviews = generate_reviews(num_reviews, f"corpus:{seed}:{attempt}")
        keep = reviews.loc[~is_held_out(reviews["prompt"])]
        texts = keep["text"].tolist()
        if rude_share > 0:
            # Its own stream: the reviews drawn are the same with and without insults.
            rng = random.Random(f"alt-demo-rude:{seed}:{attempt}")
            # Only negative and mixed reviews (half the corpus) turn rude, so twice the share.
            texts = [
                rude(t, p, d, rng) if rng.random() < 2 * rude_share and lab in RUDE_LABELS else t
                for t, p, d, lab in zip(
                    texts, keep["prompt"], keep["domain"], keep["label"], strict=True
                )
            ]
        out.extend(texts[: num_reviews - len(out)])
        attempt += 1
    return out
