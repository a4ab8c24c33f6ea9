"""Chat preference pairs whose right answer is known: so flipped labels can be planted, and counted.

For the pretrained chat model (`trl_conservative.demo.pretrained`). Each row is in TRL's conversational format::

    {"prompt": [{"role": "user", "content": "What is 17 + 25?"}],
     "chosen": [{"role": "assistant", "content": "42."}],
     "rejected": [{"role": "assistant", "content": "43."}]}

Families a 135M chat model partly knows: small sums, differences and products, the larger of two numbers, the
number after a number, even or odd, the next letter of the alphabet (each answer recomputable from the question),
and capital cities, antonyms and plurals (from the tables below). The rejected answer is a near miss: off by one,
the digits swapped, another big city of the same country, a word that is not the opposite, a misformed plural.
Every question appears once; the `test` split holds out whole questions. With the SmolLM2 chat template a prompt
plus either answer is 40-47 tokens, 21 of them the default system prompt the template adds.

``builtin:chat-facts`` names the shipped `train`/`test` splits in a config; regenerate them with
``python -m trl_conservative.demo.chat_tasks`` (a test checks they match). `flip_pairs` plants label noise.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .tasks import DATA_DIR, flip_labels, write_jsonl

__all__ = [
    "ANTONYMS",
    "CAPITALS",
    "CHAT_DATASET",
    "CHAT_TEST_FILE",
    "CHAT_TRAIN_FILE",
    "FAMILIES",
    "PLURALS",
    "ChatFactsTask",
    "ChatRow",
    "chat_dataset_files",
    "chat_row",
    "flip_pairs",
    "write_chat_dataset",
]

CHAT_DATASET = "builtin:chat-facts"
CHAT_TRAIN_FILE = "chat_facts_train.jsonl"
CHAT_TEST_FILE = "chat_facts_test.jsonl"

ChatRow = dict[str, list[dict[str, str]]]
Fact = tuple[str, str, str]  # question, right answer, wrong answer

# country: (capital, another large city of that country)
CAPITALS = {
    "France": ("Paris", "Lyon"),
    "Germany": ("Berlin", "Munich"),
    "Italy": ("Rome", "Milan"),
    "Spain": ("Madrid", "Barcelona"),
    "Portugal": ("Lisbon", "Porto"),
    "the United Kingdom": ("London", "Manchester"),
    "Ireland": ("Dublin", "Cork"),
    "Belgium": ("Brussels", "Antwerp"),
    "Austria": ("Vienna", "Salzburg"),
    "Switzerland": ("Bern", "Zurich"),
    "Poland": ("Warsaw", "Krakow"),
    "Greece": ("Athens", "Thessaloniki"),
    "Sweden": ("Stockholm", "Gothenburg"),
    "Norway": ("Oslo", "Bergen"),
    "Denmark": ("Copenhagen", "Aarhus"),
    "Finland": ("Helsinki", "Tampere"),
    "Hungary": ("Budapest", "Debrecen"),
    "the Czech Republic": ("Prague", "Brno"),
    "Romania": ("Bucharest", "Cluj-Napoca"),
    "Ukraine": ("Kyiv", "Kharkiv"),
    "Russia": ("Moscow", "Saint Petersburg"),
    "Turkey": ("Ankara", "Istanbul"),
    "Egypt": ("Cairo", "Alexandria"),
    "Morocco": ("Rabat", "Casablanca"),
    "Nigeria": ("Abuja", "Lagos"),
    "Kenya": ("Nairobi", "Mombasa"),
    "Ghana": ("Accra", "Kumasi"),
    "Ethiopia": ("Addis Ababa", "Dire Dawa"),
    "Saudi Arabia": ("Riyadh", "Jeddah"),
    "Iraq": ("Baghdad", "Basra"),
    "Iran": ("Tehran", "Isfahan"),
    "Pakistan": ("Islamabad", "Karachi"),
    "India": ("New Delhi", "Mumbai"),
    "China": ("Beijing", "Shanghai"),
    "Japan": ("Tokyo", "Osaka"),
    "South Korea": ("Seoul", "Busan"),
    "Vietnam": ("Hanoi", "Ho Chi Minh City"),
    "Thailand": ("Bangkok", "Chiang Mai"),
    "the Philippines": ("Manila", "Cebu"),
    "Australia": ("Canberra", "Sydney"),
    "New Zealand": ("Wellington", "Auckland"),
    "Canada": ("Ottawa", "Toronto"),
    "the United States": ("Washington, D.C.", "New York"),
    "Mexico": ("Mexico City", "Guadalajara"),
    "Cuba": ("Havana", "Santiago de Cuba"),
    "Colombia": ("Bogota", "Medellin"),
    "Venezuela": ("Caracas", "Maracaibo"),
    "Ecuador": ("Quito", "Guayaquil"),
    "Peru": ("Lima", "Cusco"),
    "Chile": ("Santiago", "Valparaiso"),
    "Argentina": ("Buenos Aires", "Cordoba"),
    "Brazil": ("Brasilia", "Rio de Janeiro"),
}

# word: (its opposite, a word of like meaning)
ANTONYMS = {
    "hot": ("cold", "warm"),
    "big": ("small", "large"),
    "fast": ("slow", "quick"),
    "happy": ("sad", "glad"),
    "early": ("late", "soon"),
    "high": ("low", "tall"),
    "rich": ("poor", "wealthy"),
    "strong": ("weak", "powerful"),
    "hard": ("soft", "firm"),
    "wet": ("dry", "damp"),
    "loud": ("quiet", "noisy"),
    "true": ("false", "correct"),
    "begin": ("end", "start"),
    "thick": ("thin", "dense"),
    "heavy": ("light", "weighty"),
    "clean": ("dirty", "tidy"),
    "cheap": ("expensive", "inexpensive"),
    "empty": ("full", "vacant"),
    "inside": ("outside", "within"),
    "push": ("pull", "press"),
    "love": ("hate", "adore"),
    "friend": ("enemy", "pal"),
    "buy": ("sell", "purchase"),
    "safe": ("dangerous", "secure"),
    "brave": ("cowardly", "bold"),
    "always": ("never", "constantly"),
    "remember": ("forget", "recall"),
    "top": ("bottom", "peak"),
    "north": ("south", "east"),
    "east": ("west", "north"),
    "black": ("white", "dark"),
    "question": ("answer", "query"),
    "give": ("take", "donate"),
    "first": ("last", "initial"),
    "increase": ("decrease", "raise"),
    "shout": ("whisper", "yell"),
    "smooth": ("rough", "sleek"),
    "sharp": ("dull", "pointed"),
    "above": ("below", "over"),
    "before": ("after", "prior"),
    "difficult": ("easy", "hard"),
    "win": ("lose", "triumph"),
    "arrive": ("leave", "reach"),
    "wide": ("narrow", "broad"),
    "ancient": ("modern", "old"),
    "accept": ("refuse", "receive"),
    "laugh": ("cry", "giggle"),
    "open": ("closed", "ajar"),
}

# noun: (its plural, a wrong plural)
PLURALS = {
    "mouse": ("mice", "mouses"),
    "child": ("children", "childs"),
    "man": ("men", "mans"),
    "woman": ("women", "womans"),
    "tooth": ("teeth", "tooths"),
    "foot": ("feet", "foots"),
    "goose": ("geese", "gooses"),
    "ox": ("oxen", "oxes"),
    "louse": ("lice", "louses"),
    "sheep": ("sheep", "sheeps"),
    "deer": ("deer", "deers"),
    "moose": ("moose", "mooses"),
    "city": ("cities", "citys"),
    "baby": ("babies", "babys"),
    "party": ("parties", "partys"),
    "story": ("stories", "storys"),
    "cherry": ("cherries", "cherrys"),
    "lady": ("ladies", "ladys"),
    "knife": ("knives", "knifes"),
    "wolf": ("wolves", "wolfs"),
    "wife": ("wives", "wifes"),
    "half": ("halves", "halfs"),
    "life": ("lives", "lifes"),
    "shelf": ("shelves", "shelfs"),
    "loaf": ("loaves", "loafs"),
    "thief": ("thieves", "thiefs"),
    "box": ("boxes", "boxs"),
    "fox": ("foxes", "foxs"),
    "church": ("churches", "churchs"),
    "dish": ("dishes", "dishs"),
    "brush": ("brushes", "brushs"),
    "watch": ("watches", "watchs"),
    "bench": ("benches", "benchs"),
    "potato": ("potatoes", "potatos"),
    "tomato": ("tomatoes", "tomatos"),
    "hero": ("heroes", "heros"),
    "key": ("keys", "keies"),
    "day": ("days", "daies"),
    "boy": ("boys", "boies"),
    "toy": ("toys", "toies"),
    "crisis": ("crises", "crisises"),
    "cactus": ("cacti", "cactis"),
}


def _near_miss(rng: random.Random, right: int) -> int:
    """Off by one or two, or the digits swapped: never the right answer, never negative."""
    candidates = {right - 2, right - 1, right + 1, right + 2}
    if right >= 10 and str(right)[::-1] != str(right):
        candidates.add(int(str(right)[::-1]))
    return rng.choice(sorted(c for c in candidates if c >= 0 and c != right))


def _additions(rng: random.Random) -> list[Fact]:
    out = []
    for a in range(2, 50):
        for b in range(2, 50):
            wrong = _near_miss(rng, a + b)
            out.append((f"What is {a} + {b}?", f"{a + b}.", f"{wrong}."))
    return out


def _subtractions(rng: random.Random) -> list[Fact]:
    out = []
    for a in range(10, 60):
        for b in range(2, a):
            wrong = _near_miss(rng, a - b)
            out.append((f"What is {a} - {b}?", f"{a - b}.", f"{wrong}."))
    return out


def _products(rng: random.Random) -> list[Fact]:
    out = []
    for a in range(2, 13):
        for b in range(2, 13):
            wrong = _near_miss(rng, a * b)
            out.append((f"What is {a} times {b}?", f"{a * b}.", f"{wrong}."))
    return out


def _larger(rng: random.Random) -> list[Fact]:
    out = []
    for a in range(10, 100):
        for b in range(10, 100):
            if a != b:
                out.append((f"Which is larger, {a} or {b}?", f"{max(a, b)}.", f"{min(a, b)}."))
    return out


def _successors(rng: random.Random) -> list[Fact]:
    out = []
    for n in range(5, 200):
        wrong = rng.choice([n - 1, n + 2, n + 10])
        out.append((f"What number comes after {n}?", f"{n + 1}.", f"{wrong}."))
    return out


def _parity(rng: random.Random) -> list[Fact]:
    out = []
    for n in range(3, 200):
        right, wrong = ("Even", "Odd") if n % 2 == 0 else ("Odd", "Even")
        out.append((f"Is {n} even or odd?", f"{right}.", f"{wrong}."))
    return out


def _next_letters(rng: random.Random) -> list[Fact]:
    letters = string.ascii_uppercase
    out = []
    for i, letter in enumerate(letters[:-1]):
        wrong = letters[i - 1] if i > 0 and rng.random() < 0.5 else letters[min(i + 2, 25)]
        if wrong == letters[i + 1]:
            wrong = letters[i - 1]
        out.append((f"Which letter comes after {letter}?", f"{letters[i + 1]}.", f"{wrong}."))
    return out


def _capitals(rng: random.Random) -> list[Fact]:
    return [
        (f"What is the capital of {country}?", f"{right}.", f"{wrong}.")
        for country, (right, wrong) in CAPITALS.items()
    ]


def _antonyms(rng: random.Random) -> list[Fact]:
    return [
        (f'What is the opposite of "{word}"?', f"{right.capitalize()}.", f"{wrong.capitalize()}.")
        for word, (right, wrong) in ANTONYMS.items()
    ]


def _plurals(rng: random.Random) -> list[Fact]:
    return [
        (f'What is the plural of "{word}"?', f"{right.capitalize()}.", f"{wrong.capitalize()}.")
        for word, (right, wrong) in PLURALS.items()
    ]


# name -> every (question, right, wrong) of the family; seeded only in the choice of the wrong answer
FAMILIES: dict[str, Callable[[random.Random], list[Fact]]] = {
    "addition": _additions,
    "subtraction": _subtractions,
    "multiplication": _products,
    "larger": _larger,
    "successor": _successors,
    "parity": _parity,
    "next_letter": _next_letters,
    "capital": _capitals,
    "antonym": _antonyms,
    "plural": _plurals,
}


def chat_row(question: str, right: str, wrong: str) -> ChatRow:
    return {
        "prompt": [{"role": "user", "content": question}],
        "chosen": [{"role": "assistant", "content": right}],
        "rejected": [{"role": "assistant", "content": wrong}],
    }


@dataclass(frozen=True, kw_only=True)
class ChatFactsTask:
    """Up to `per_family` questions of each family (all of a smaller family), shuffled by `seed`; `test_fraction`
    of each family's questions are held out. The defaults give 887 pairs: 710 train, 177 test."""

    per_family: int = 120
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.per_family < 2:
            raise ValueError(f"per_family must be >= 2, got {self.per_family!r}.")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must lie in (0, 1), got {self.test_fraction!r}.")

    def facts(self) -> dict[str, tuple[list[Fact], list[Fact]]]:
        """Family name -> (train, test) facts."""
        out = {}
        for i, (name, family) in enumerate(FAMILIES.items()):
            rng = random.Random(self.seed * 1000 + i)
            facts = family(rng)
            rng.shuffle(facts)
            facts = facts[: self.per_family]
            n_test = max(1, round(len(facts) * self.test_fraction))
            out[name] = (facts[n_test:], facts[:n_test])
        return out

    def build(self) -> dict[str, list[ChatRow]]:
        """The `train` and `test` splits, the families interleaved by a seeded shuffle."""
        splits: dict[str, list[ChatRow]] = {"train": [], "test": []}
        for train, test in self.facts().values():
            splits["train"] += [chat_row(*fact) for fact in train]
            splits["test"] += [chat_row(*fact) for fact in test]
        rng = random.Random(self.seed)
        for rows in splits.values():
            rng.shuffle(rows)
        return splits


def flip_pairs(rows: Sequence[ChatRow], share: float, seed: int = 0) -> tuple[list[ChatRow], list[int]]:
    """Swap chosen and rejected in exactly `round(share * len(rows))` rows picked at random (`tasks.flip_labels`).

    Returns new rows (the input is not modified) and the sorted indices of the flipped ones.
    """
    return flip_labels(rows, share, seed=seed)


def chat_dataset_files() -> dict[str, str]:
    """Split name -> path of the shipped chat preference JSONL files (``builtin:chat-facts``)."""
    return {"train": str(DATA_DIR / CHAT_TRAIN_FILE), "test": str(DATA_DIR / CHAT_TEST_FILE)}


def write_chat_dataset(
    directory: str | Path = DATA_DIR, task: ChatFactsTask | None = None
) -> dict[str, Path]:
    """Write the task's splits as JSONL files into `directory`; returns split -> path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    names = {"train": CHAT_TRAIN_FILE, "test": CHAT_TEST_FILE}
    paths = {}
    for split, rows in (task or ChatFactsTask()).build().items():
        paths[split] = directory / names[split]
        write_jsonl(rows, paths[split])
    return paths


if __name__ == "__main__":
    for split, path in write_chat_dataset().items():
        print(f"{split}: {path}")
