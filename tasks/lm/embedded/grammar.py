"""Corpus: a probabilistic grammar of small English-like documents in four genres, written as jsonl."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Callable

from tasks.lm.embedded.lexicon import (
    _ADJ,
    _ADV,
    _NOUNS,
    _ORDINALS,
    _PRONOUNS,
    _THINGS,
    _V_FALL,
    _V_INTRANS,
    _V_THING,
    _a,
    _cap,
)
from tasks.lm.embedded.phrases import _Doc


def _story(d: _Doc) -> str:
    r = d.rng
    paras: list[str] = []
    title = f"The {_cap(d.thing_adj)} {_cap(d.thing[0])}" if r.random() < 0.5 else None
    first = [d.intro(i) for i in range(min(len(d.chars), r.choice([1, 2, 2])))]
    first.append(f"One day, {d.chars[0][0]} found {_a(d.thing_adj + ' ' + d.thing[0])} {d.pp()}.")
    paras.append(" ".join(first))
    for _ in range(r.randint(2, 5)):
        sents: list[str] = []
        for _ in range(r.randint(3, 7)):
            k = r.random()
            if k < 0.28:
                sents.append(d.quote_sentence())
            elif k < 0.36:
                sents.extend(d.counting_episode())
            else:
                sents.append(d.sentence_past())
        paras.append(" ".join(sents))
    paras.append(r.choice([
        f"In the end, {d.chars[0][0]} kept the {d.thing_adj} {d.thing[0]}.",
        f"And that is the story of {d.chars[0][0]} and the {d.thing[0]}.",
        f"{d.chars[-1][0]} never forgot that day.",
        "The end.",
    ]))
    return (title + "\n\n" if title else "") + "\n\n".join(paras)


def _report(d: _Doc) -> str:
    """Present tense facts: number agreement with an attractor noun in between, years that increase."""
    r = d.rng
    out = [f"{d.town} is {_a(r.choice(_ADJ))} town near the {d.places[0]}."]
    year = r.randint(1700, 1990)
    pop = r.randint(120, 9000)
    out.append(f"In {year}, {pop} people lived in {d.town}.")
    for _ in range(r.randint(4, 10)):
        k = r.random()
        sing, plur, animate = r.choice(_NOUNS)
        if k < 0.25:
            a_sing, a_plur, _ = r.choice(_NOUNS)
            attractor = a_plur if r.random() < 0.5 else a_sing
            if r.random() < 0.5:
                out.append(f"The {sing} near the {attractor} is {r.choice(_ADJ)}.")
            else:
                out.append(f"The {plur} near the {attractor} are {r.choice(_ADJ)}.")
        elif k < 0.4:
            v = r.choice(_V_INTRANS if animate else _V_FALL)
            if r.random() < 0.5:
                out.append(f"Every {sing} in {d.town} {v[1]} {r.choice(_ADV)}.")
            else:
                out.append(f"Most {plur} in {d.town} {v[0]} {r.choice(_ADV)}.")
        elif k < 0.55:
            n = r.randint(2, 999)
            out.append(f"The {r.choice(d.places)} has {n} {plur}.")
        elif k < 0.7:
            year += r.randint(1, 30)
            pop += r.randint(-100, 900)
            out.append(f"By {year}, there were {max(pop, 50)} people in {d.town}.")
        elif k < 0.8:
            name, pron = d.chars[r.randrange(len(d.chars))]
            has = _PRONOUNS[pron][5]
            out.append(f"{name} works at the {r.choice(d.places)}. {_cap(_PRONOUNS[pron][0])} {has} "
                       f"{r.randint(2, 40)} {plur}.")
        elif k < 0.9:
            if r.random() < 0.5:
                out.append(f"There is {_a(sing)} {d.pp()}.")
            else:
                out.append(f"There are {r.randint(2, 30)} {plur} {d.pp()}.")
        else:
            out.append(f"The {r.choice(_ORDINALS)} {sing} is {r.choice(_ADJ)}, but the "
                       f"{r.choice(_ORDINALS)} one is {r.choice(_ADJ)}.")
    return "\n\n".join(" ".join(out[i:i + 3]) for i in range(0, len(out), 3))


def _dialogue(d: _Doc) -> str:
    """A transcript whose speaker labels repeat: copying a label is the only way to predict it."""
    r = d.rng
    lines = []
    speakers = d.chars[:2]
    for t in range(r.randint(6, 14)):
        i = t % 2 if r.random() < 0.85 else r.randrange(2)
        d.focus = i
        name = speakers[i][0]
        other = speakers[1 - i][0]
        text, q = d.utterance(other if r.random() < 0.5 else None)
        lines.append(f"{name}: {_cap(text)}{'?' if q else '.'}")
    return "\n".join(lines)


def _instructions(d: _Doc) -> str:
    """Numbered steps: the counter increments by one, a pattern a transformer learns quickly."""
    r = d.rng
    v = r.choice(_V_THING)
    head = f"How to {v[0]} {_a(d.thing_adj + ' ' + d.thing[0])}"
    steps = []
    for i in range(1, r.randint(3, 8) + 1):
        sing, plur, _ = r.choice(_THINGS)
        k = r.random()
        if k < 0.25:
            step = f"Take {d.count_word(r.randint(2, 9))} {plur}"
        elif k < 0.45:
            step = f"Put the {sing} {d.pp()}"
        elif k < 0.6:
            step = f"Wait for {d.count_word(r.randint(2, 30))} minutes"
        elif k < 0.75:
            step = f"Add {_a(r.choice(_ADJ) + ' ' + sing)}"
        elif k < 0.9:
            w = r.choice(_V_THING)
            step = f"{_cap(w[0])} the {d.thing[0]} {r.choice(_ADV)}"
        else:
            step = f"Ask {d.chars[0][0]} for help"
        steps.append(f"{i}. {step}.")
    tail = f"Now the {d.thing[0]} is ready."
    return head + "\n\n" + "\n".join(steps) + "\n\n" + tail


_GENRES: list[tuple[float, Callable[[_Doc], str]]] = [
    (0.6, _story), (0.18, _report), (0.12, _dialogue), (0.10, _instructions)]


def generate_document(rng: random.Random) -> str:
    k = rng.random()
    acc = 0.0
    for p, fn in _GENRES:
        acc += p
        if k < acc:
            return fn(_Doc(rng))
    return _GENRES[-1][1](_Doc(rng))


def generate_chat(rng: random.Random) -> list[dict[str, str]]:
    """A conversation for the instruction-tuned variant: the user says or asks what the dialogues' speakers
    do, and the assistant answers in a sentence of the stories, about the same characters."""
    d = _Doc(rng)
    messages = []
    for _ in range(rng.randint(2, 4)):
        text, q = d.utterance(None)
        messages.append({"role": "user", "content": f"{_cap(text)}{'?' if q else '.'}"})
        if rng.random() < 0.6:
            reply = d.sentence_past()
        else:
            said, asked = d.utterance(rng.choice(d.chars)[0])
            reply = f"{_cap(said)}{'?' if asked else '.'}"
        messages.append({"role": "assistant", "content": reply})
    return messages


def _write_jsonl(path: Path, records) -> Path:
    """Same seed, same bytes: `random.Random` is specified to be reproducible across platforms, and the file
    is written to a temporary name first so a crash never leaves a truncated file under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False))
            f.write("\n")
    os.replace(tmp, path)
    return path


def generate_chats(path: Path, n_chats: int, seed: int) -> Path:
    rng = random.Random(seed)
    return _write_jsonl(path, ({"messages": generate_chat(rng)} for _ in range(n_chats)))


def read_chats(path: Path) -> list[list[dict[str, str]]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["messages"] for line in f if line.strip()]


def generate_corpus(path: Path, n_docs: int, seed: int) -> Path:
    rng = random.Random(seed)
    return _write_jsonl(path, ({"text": generate_document(rng)} for _ in range(n_docs)))


def read_corpus(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]
