"""Built-in synthetic data: deterministic from a seed, no files, works anywhere.

* ``story_corpus``: a small "story world" — a few dozen characters, places and objects, simple
  grammar — so a first training run has real-looking text offline.
* Verifiable tasks (``make_tasks``): arithmetic, copying, reversal and facts of a fixed toy world.
  Each item has a prompt and one exact answer, so a reward or an exact-match score is a string
  comparison. Post-training (SFT, DPO, GRPO) uses them where the effect must be measurable.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

SYNTHETIC_CORPORA = ("synthetic-stories",)

NAMES = ["Lily", "Tom", "Mia", "Ben", "Zoe", "Max", "Anna", "Sam", "Lucy", "Leo", "Emma", "Jack", "Nora", "Finn"]
ANIMALS = ["cat", "dog", "bird", "frog", "rabbit", "fox", "duck", "bear", "mouse", "owl"]
PLACES = ["park", "forest", "garden", "beach", "farm", "river", "hill", "town", "lake", "school"]
OBJECTS = ["ball", "kite", "box", "hat", "book", "cake", "boat", "shell", "flower", "drum", "key", "stone"]
COLORS = ["red", "blue", "green", "yellow", "big", "small", "shiny", "soft", "old", "new"]
FEELINGS = ["happy", "sad", "scared", "excited", "tired", "proud", "curious", "surprised"]


def _story(rng: random.Random) -> str:
    hero, friend = rng.sample(NAMES, 2)
    animal, place, obj = rng.choice(ANIMALS), rng.choice(PLACES), rng.choice(OBJECTS)
    color, feel1, feel2 = rng.choice(COLORS), rng.choice(FEELINGS), rng.choice(FEELINGS)
    opening = rng.choice([
        f"Once upon a time, there was a {feel1} {animal} named {hero}.",
        f"One day, {hero} went to the {place}.",
        f"{hero} was a little {animal} who lived near the {place}.",
    ])
    middle = [
        f"{hero} found a {color} {obj} in the {place}.",
        rng.choice([f"{hero} showed the {obj} to {friend}.", f"{friend} wanted to play with the {obj} too."]),
        rng.choice([
            f"\"Can I have it?\" asked {friend}.",
            f"\"Look at my {obj}!\" said {hero}.",
            f"\"Let's share it,\" said {hero}.",
        ]),
        rng.choice([
            f"But the {obj} fell into the {rng.choice(PLACES)}.",
            "Then it started to rain, and they ran home.",
            f"They played with the {obj} all day.",
        ]),
    ]
    ending = rng.choice([
        f"In the end, {hero} and {friend} were {feel2} and became best friends.",
        f"{hero} learned that sharing makes everyone {feel2}.",
        f"That night, {hero} dreamed about the {color} {obj}.",
    ])
    return " ".join([opening, *middle, ending])


def story_corpus(n_chars: int = 400_000, seed: int = 0) -> list[str]:
    """Stories (documents) until about ``n_chars`` characters; the same seed gives the same corpus."""
    rng = random.Random(seed)
    docs, total = [], 0
    while total < n_chars:
        doc = _story(rng)
        docs.append(doc)
        total += len(doc) + 1
    return docs


# ---- verifiable tasks -------------------------------------------------------------------------
@dataclass(frozen=True)
class TaskItem:
    task: str  # "add", "sub", "mul", "copy", "reverse", "fact"
    prompt: str
    answer: str

    def is_correct(self, completion: str) -> bool:
        """Exact match after trimming whitespace: the reward of a verifiable task."""
        return completion.strip() == self.answer


TASKS = ("add", "sub", "mul", "copy", "reverse", "fact")
_LETTERS = "abcdefghij"


def _world(seed: int = 1234) -> dict[str, str]:
    """A fixed toy world: each name has a favourite object (facts a model can only memorise)."""
    rng = random.Random(seed)
    return {name: rng.choice(OBJECTS) for name in NAMES}


def make_task(task: str, rng: random.Random, max_operand: int = 99) -> TaskItem:
    if task in ("add", "sub", "mul"):
        top = max_operand if task != "mul" else min(max_operand, 12)
        a, b = rng.randint(0, top), rng.randint(0, top)
        if task == "sub" and b > a:
            a, b = b, a
        symbol = {"add": "+", "sub": "-", "mul": "*"}[task]
        value = {"add": a + b, "sub": a - b, "mul": a * b}[task]
        return TaskItem(task, f"What is {a} {symbol} {b}?", str(value))
    if task in ("copy", "reverse"):
        word = "".join(rng.choice(_LETTERS) for _ in range(rng.randint(3, 8)))
        verb = "Copy" if task == "copy" else "Reverse"
        return TaskItem(task, f"{verb} the letters: {word}", word if task == "copy" else word[::-1])
    if task == "fact":
        name, obj = rng.choice(sorted(_world().items()))
        return TaskItem(task, f"What is {name}'s favourite thing?", obj)
    raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")


def make_tasks(n: int, tasks: tuple[str, ...] = TASKS, seed: int = 0, max_operand: int = 99) -> list[TaskItem]:
    """``n`` items cycling through ``tasks``; deterministic for a seed."""
    rng = random.Random(seed)
    return [make_task(tasks[i % len(tasks)], rng, max_operand) for i in range(n)]
