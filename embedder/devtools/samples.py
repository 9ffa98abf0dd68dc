"""A generated, tweet-like sample corpus with real topical structure.

Used by ``make demo`` and the benchmarks: texts about a handful of topics, written from
templates and vocabularies, so that a nearest-neighbour query over their embeddings finds
texts on the same topic. Deterministic for a given seed; nothing is downloaded.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

TOPICS: dict[str, dict[str, list[str]]] = {
    "football": {
        "subject": [
            "the striker",
            "our goalkeeper",
            "the coach",
            "the home team",
            "the midfield",
            "the referee",
        ],
        "event": [
            "scored a late winner",
            "saved a penalty",
            "was sent off",
            "lost the derby 2-1",
            "won the league title",
            "signed a new contract",
        ],
        "tag": ["#football", "#matchday", "#derby", "#goal"],
    },
    "weather": {
        "subject": [
            "the storm",
            "heavy rain",
            "this heatwave",
            "the snow",
            "thick fog",
            "strong wind",
        ],
        "event": [
            "flooded the streets again",
            "closed the schools today",
            "knocked out power downtown",
            "is forecast to last all week",
            "delayed every train",
            "broke the temperature record",
        ],
        "tag": ["#weather", "#storm", "#forecast", "#climate"],
    },
    "cooking": {
        "subject": [
            "my sourdough",
            "grandma's lasagna",
            "this ramen recipe",
            "the curry",
            "fresh pasta",
            "the chocolate cake",
        ],
        "event": [
            "came out perfect tonight",
            "needs more garlic",
            "took three hours to bake",
            "is the best thing I have eaten",
            "burned in the oven",
            "was a hit at dinner",
        ],
        "tag": ["#cooking", "#recipe", "#foodie", "#baking"],
    },
    "programming": {
        "subject": [
            "the python build",
            "my rust compiler",
            "this kubernetes cluster",
            "the database migration",
            "our CI pipeline",
            "the javascript bundle",
        ],
        "event": [
            "failed with a segfault",
            "finally passes all tests",
            "leaks memory under load",
            "deployed to production",
            "is ten times faster now",
            "broke after the upgrade",
        ],
        "tag": ["#programming", "#devops", "#python", "#coding"],
    },
    "music": {
        "subject": [
            "the new album",
            "last night's concert",
            "that guitar solo",
            "the festival lineup",
            "this jazz record",
            "the orchestra",
        ],
        "event": [
            "gave me chills",
            "sold out in minutes",
            "is on repeat all day",
            "was too loud",
            "dropped at midnight",
            "deserves a grammy",
        ],
        "tag": ["#music", "#concert", "#nowplaying", "#festival"],
    },
    "markets": {
        "subject": [
            "the stock market",
            "bitcoin",
            "tech shares",
            "the central bank",
            "oil prices",
            "the bond market",
        ],
        "event": [
            "crashed this morning",
            "rallied after the earnings",
            "raised interest rates",
            "hit a record high",
            "fell sharply on inflation fears",
            "is very volatile today",
        ],
        "tag": ["#stocks", "#investing", "#markets", "#finance"],
    },
}

_OPENERS = ["", "wow, ", "honestly ", "breaking: ", "can't believe ", "so ", "ugh, ", "lol "]
_CLOSERS = ["", "!", "!!", " 😂", " 🔥", " 🙏", "...", " 👀", " 😭"]


@dataclass(frozen=True, slots=True)
class SampleText:
    topic: str
    text: str


def generate(count: int, *, seed: int = 0, duplicate_rate: float = 0.0) -> list[SampleText]:
    """``count`` tweet-like texts; ``duplicate_rate`` of them repeat an earlier text verbatim."""
    rng = random.Random(seed)
    names = sorted(TOPICS)
    samples: list[SampleText] = []
    for _ in range(count):
        if samples and rng.random() < duplicate_rate:
            samples.append(rng.choice(samples))
            continue
        topic = rng.choice(names)
        parts = TOPICS[topic]
        text = (
            f"{rng.choice(_OPENERS)}{rng.choice(parts['subject'])} {rng.choice(parts['event'])}"
            f"{rng.choice(_CLOSERS)} {rng.choice(parts['tag'])}"
        )
        if rng.random() < 0.3:
            text += f" {rng.choice(parts['tag'])}"
        samples.append(SampleText(topic, text))
    return samples
