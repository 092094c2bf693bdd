"""The embedded default: a corpus, a tokenizer and a tiny Gemma-2 causal LM that scopeflow makes itself,
offline and deterministically, so the whole SAE pipeline runs on a laptop with no downloads.

The corpus comes from a seeded probabilistic grammar rather than a bundled text so nothing large lives in
the repository and nothing is fetched; the grammar carries enough structure (agreement, articles, recurring
invented names, quotes, numbered steps, consistent arithmetic) that a small LM learns features an SAE can
find. The model is a genuine `Gemma2ForCausalLM` saved as a standard Hugging Face folder, so the rest of the
pipeline loads it through exactly the code path that loads google/gemma-2-2b.

Assets are built once into a cache folder (atomically, under a file lock) and reused.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

EMBEDDED_CORPUS = "embedded:tiny-corpus"
EMBEDDED_MODEL = "embedded:tiny-gemma2"

# Bump when anything below changes what gets built: the cache folder is named after it, so an old build is
# never mistaken for a new one.
EMBEDDED_VERSION = 1

BUILD_SEED = 0
BUILD_N_DOCS = 4000
BUILD_VOCAB_SIZE = 1024
TRAIN_CTX = 128

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # ids 0..3, as in Gemma's tokenizer
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3

STATS_FILE = "scopeflow_embedded.json"
MANIFEST_FILE = "manifest.json"
COMPLETE_MARKER = "COMPLETE"


# ----------------------------------------------------------------------------------------------------------
# Corpus: a probabilistic grammar of small English-like documents
# ----------------------------------------------------------------------------------------------------------

_NAMES = [
    ("Anna", "she"), ("Ben", "he"), ("Clara", "she"), ("David", "he"), ("Emma", "she"), ("Felix", "he"),
    ("Grace", "she"), ("Henry", "he"), ("Iris", "she"), ("Jack", "he"), ("Lena", "she"), ("Leo", "he"),
    ("Maya", "she"), ("Noah", "he"), ("Olivia", "she"), ("Oscar", "he"), ("Rosa", "she"), ("Sam", "they"),
    ("Tara", "she"), ("Tom", "he"), ("Vera", "she"), ("Victor", "he"), ("Alex", "they"), ("Kai", "they"),
]
# Invented names are absent from any prior: the only way to predict their second mention is to copy the
# first, which is what makes induction-style features appear in a model this small.
_ONSETS = ["b", "br", "d", "dr", "f", "g", "gr", "k", "kl", "l", "m", "n", "p", "r", "s", "st", "t", "th",
           "v", "z", "sh", "w"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "io", "y"]
_CODAS = ["", "", "n", "r", "l", "th", "s", "k", "m", "x", "nd", "sk"]

_PRONOUNS = {  # subject, object, possessive, "to be" past, "to be" present, "to have" present
    "she": ("she", "her", "her", "was", "is", "has"),
    "he": ("he", "him", "his", "was", "is", "has"),
    "they": ("they", "them", "their", "were", "are", "have"),
}

# (singular, plural, animate)
_NOUNS = [
    ("cat", "cats", True), ("dog", "dogs", True), ("bird", "birds", True), ("fox", "foxes", True),
    ("horse", "horses", True), ("mouse", "mice", True), ("child", "children", True), ("man", "men", True),
    ("woman", "women", True), ("farmer", "farmers", True), ("baker", "bakers", True),
    ("teacher", "teachers", True), ("sailor", "sailors", True), ("king", "kings", True),
    ("queen", "queens", True), ("sheep", "sheep", True), ("goose", "geese", True), ("owl", "owls", True),
    ("wolf", "wolves", True), ("rabbit", "rabbits", True), ("doctor", "doctors", True),
    ("box", "boxes", False), ("key", "keys", False), ("book", "books", False), ("letter", "letters", False),
    ("map", "maps", False), ("lamp", "lamps", False), ("coin", "coins", False), ("stone", "stones", False),
    ("apple", "apples", False), ("cup", "cups", False), ("basket", "baskets", False), ("boat", "boats", False),
    ("door", "doors", False), ("window", "windows", False), ("tree", "trees", False),
    ("flower", "flowers", False), ("story", "stories", False), ("song", "songs", False),
    ("knife", "knives", False), ("leaf", "leaves", False), ("shelf", "shelves", False),
    ("berry", "berries", False), ("candle", "candles", False), ("hat", "hats", False), ("ring", "rings", False),
    ("bell", "bells", False), ("clock", "clocks", False), ("bottle", "bottles", False), ("ship", "ships", False),
    ("wheel", "wheels", False), ("rope", "ropes", False), ("feather", "feathers", False), ("egg", "eggs", False),
    ("loaf", "loaves", False), ("umbrella", "umbrellas", False), ("orange", "oranges", False),
    ("envelope", "envelopes", False), ("onion", "onions", False), ("island", "islands", False),
]
_ANIMATE = [n for n in _NOUNS if n[2]]
_THINGS = [n for n in _NOUNS if not n[2]]
_JOBS = ["farmer", "baker", "teacher", "sailor", "doctor", "painter", "fisher", "builder", "singer", "guard",
         "weaver", "miller", "hunter", "artist", "engineer", "inventor"]

# (base, third person singular, past)
_V_INTRANS = [
    ("walk", "walks", "walked"), ("run", "runs", "ran"), ("sleep", "sleeps", "slept"),
    ("laugh", "laughs", "laughed"), ("sing", "sings", "sang"), ("wait", "waits", "waited"),
    ("rest", "rests", "rested"), ("hide", "hides", "hid"), ("jump", "jumps", "jumped"),
    ("swim", "swims", "swam"), ("cry", "cries", "cried"), ("smile", "smiles", "smiled"),
    ("dance", "dances", "danced"), ("listen", "listens", "listened"), ("sit", "sits", "sat"),
    ("work", "works", "worked"), ("play", "plays", "played"), ("hurry", "hurries", "hurried"),
]
_V_THING = [  # animate subject, inanimate object
    ("find", "finds", "found"), ("carry", "carries", "carried"), ("open", "opens", "opened"),
    ("drop", "drops", "dropped"), ("buy", "buys", "bought"), ("sell", "sells", "sold"),
    ("hold", "holds", "held"), ("clean", "cleans", "cleaned"), ("paint", "paints", "painted"),
    ("fix", "fixes", "fixed"), ("lose", "loses", "lost"), ("take", "takes", "took"),
    ("bring", "brings", "brought"), ("make", "makes", "made"), ("break", "breaks", "broke"),
    ("wash", "washes", "washed"), ("count", "counts", "counted"), ("hide", "hides", "hid"),
    ("want", "wants", "wanted"), ("keep", "keeps", "kept"),
]
_V_PERSON = [  # animate subject, animate object
    ("see", "sees", "saw"), ("help", "helps", "helped"), ("follow", "follows", "followed"),
    ("call", "calls", "called"), ("meet", "meets", "met"), ("thank", "thanks", "thanked"),
    ("watch", "watches", "watched"), ("greet", "greets", "greeted"), ("visit", "visits", "visited"),
    ("teach", "teaches", "taught"),
]
_V_FALL = [  # inanimate subject
    ("fall", "falls", "fell"), ("shine", "shines", "shone"), ("roll", "rolls", "rolled"),
    ("float", "floats", "floated"), ("glow", "glows", "glowed"), ("vanish", "vanishes", "vanished"),
    ("slide", "slides", "slid"), ("shake", "shakes", "shook"),
]

_ADJ = ["big", "small", "old", "new", "red", "blue", "green", "yellow", "white", "black", "heavy", "light",
        "bright", "dark", "round", "tall", "short", "soft", "warm", "cold", "wet", "dry", "broken", "shiny",
        "quiet", "loud", "tiny", "huge", "wooden", "golden", "silver", "strange", "lovely", "empty", "ancient",
        "orange", "early", "odd", "ugly", "elegant"]
_FEEL = ["happy", "sad", "tired", "angry", "afraid", "proud", "calm", "curious", "hungry", "worried", "glad",
         "excited", "lonely", "sleepy", "surprised"]
_ADV = ["slowly", "quickly", "quietly", "carefully", "happily", "sadly", "loudly", "gently", "suddenly",
        "again", "at once", "for a long time"]
_PLACES = ["kitchen", "garden", "forest", "river", "market", "bridge", "hill", "village", "tower", "library",
           "harbor", "field", "cave", "road", "bakery", "school", "castle", "lake", "well", "barn", "meadow",
           "station", "shop", "beach", "orchard", "attic", "inn"]
_PREPS = ["in", "near", "behind", "beside", "under", "across", "past", "by", "inside", "above", "outside"]
_MOTION = ["to", "toward", "into", "across", "past", "through", "around"]
_TIMES = ["In the morning", "That evening", "At noon", "Later", "The next day", "After a while",
          "At night", "Soon", "Before dinner", "After lunch", "Once upon a time", "Every day"]
_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"]
_NUMWORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
             "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
             "twenty"]
_ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth"]
_SAY = ["said", "replied", "whispered", "shouted", "answered", "added", "explained"]
_ASK = ["asked", "wondered", "called out"]


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


class _Doc:
    """Per-document state, so that names, places and the object of the story recur within a document the
    way real text repeats its entities."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        n_chars = rng.choice([2, 2, 3, 3, 4])
        self.chars: list[tuple[str, str]] = []
        used: set[str] = set()
        while len(self.chars) < n_chars:
            if rng.random() < 0.5:
                name, pron = rng.choice(_NAMES)
            else:
                name, pron = self.invent_name(), rng.choice(["she", "he", "he", "she", "they"])
            if name not in used:
                used.add(name)
                self.chars.append((name, pron))
        self.town = self.invent_name() + rng.choice(["ton", "by", "ford", " Falls", " Hill", "wick", ""])
        self.places = rng.sample(_PLACES, 3)
        self.thing = rng.choice(_THINGS)
        self.thing_adj = rng.choice(_ADJ)
        self.focus = 0  # index of the character the narration is about
        self.last = -1  # index of the character named last; only it may be referred to by a pronoun

    def invent_name(self) -> str:
        r = self.rng
        syl = [r.choice(_ONSETS) + r.choice(_VOWELS) for _ in range(r.choice([1, 2, 2, 3]))]
        return _cap("".join(syl) + r.choice(_CODAS))

    # --- noun phrases -------------------------------------------------------------------------------------
    def char_subject(self) -> tuple[str, str]:
        """(surface form, pronoun class): a pronoun only for a character already named, like real text."""
        r = self.rng
        if r.random() < 0.25:
            self.focus = r.randrange(len(self.chars))
        name, pron = self.chars[self.focus]
        # A pronoun only continues the character of the previous clause, so its gender is predictable.
        if self.focus == self.last and r.random() < 0.5:
            return _PRONOUNS[pron][0], pron
        self.last = self.focus
        return name, pron

    def other_char(self) -> str:
        others = [i for i in range(len(self.chars)) if i != self.focus]
        return self.chars[self.rng.choice(others)][0]

    def thing_np(self, plural: bool | None = None, definite: bool | None = None) -> tuple[str, bool]:
        r = self.rng
        if r.random() < 0.3:  # the document's recurring object
            return f"the {self.thing_adj} {self.thing[0]}", False
        sing, plur, _ = r.choice(_THINGS)
        plural = r.random() < 0.35 if plural is None else plural
        noun = plur if plural else sing
        if r.random() < 0.5:
            noun = f"{r.choice(_ADJ)} {noun}"
        definite = r.random() < 0.5 if definite is None else definite
        if definite:
            return f"the {noun}", plural
        if plural:
            return f"{self.count_word(r.randint(2, 9))} {noun}" if r.random() < 0.6 else f"some {noun}", True
        return _a(noun), False

    def animal_np(self) -> tuple[str, bool]:
        r = self.rng
        sing, plur, _ = r.choice(_ANIMATE)
        plural = r.random() < 0.35
        noun = plur if plural else sing
        if r.random() < 0.4:
            noun = f"{r.choice(_ADJ + _FEEL)} {noun}"
        return f"the {noun}", plural

    def count_word(self, n: int) -> str:
        return _NUMWORDS[n] if n <= 20 and self.rng.random() < 0.75 else str(n)

    def pp(self) -> str:
        r = self.rng
        place = r.choice(self.places) if r.random() < 0.7 else r.choice(_PLACES)
        return f"{r.choice(_PREPS)} the {place}"

    def opt_pp(self, p: float = 0.4) -> str:
        return " " + self.pp() if self.rng.random() < p else ""

    def opt_adv(self, p: float = 0.25) -> str:
        return " " + self.rng.choice(_ADV) if self.rng.random() < p else ""

    def time_phrase(self) -> str:
        r = self.rng
        k = r.random()
        if k < 0.5:
            return r.choice(_TIMES)
        if k < 0.7:
            return f"On {r.choice(_DAYS)}"
        if k < 0.85:
            return f"At {self.count_word(r.randint(1, 12))} o'clock"
        return f"In {r.choice(_MONTHS)}"

    # --- clauses (past tense narration) -------------------------------------------------------------------
    def clause_past(self) -> str:
        r = self.rng
        k = r.random()
        if k < 0.25:
            subj, _ = self.char_subject()
            v = r.choice(_V_THING)
            obj, _ = self.thing_np()
            return f"{subj} {v[2]} {obj}{self.opt_pp()}{self.opt_adv(0.15)}"
        if k < 0.42:
            subj, _ = self.char_subject()
            v = r.choice(_V_INTRANS)
            return f"{subj} {v[2]}{self.opt_adv()}{self.opt_pp(0.5)}"
        if k < 0.55:
            subj, _ = self.char_subject()
            v = r.choice(_V_PERSON)
            obj = self.other_char() if r.random() < 0.7 else self.animal_np()[0]
            return f"{subj} {v[2]} {obj}{self.opt_pp(0.3)}"
        if k < 0.67:
            subj, pron = self.char_subject()
            be = _PRONOUNS[pron][3]
            return f"{subj} {be} {r.choice(_FEEL)}"
        if k < 0.78:
            np, plural = self.thing_np(definite=True)
            be = "were" if plural else "was"
            return f"{np} {be} {r.choice(_ADJ)}" if r.random() < 0.5 else f"{np} {be} {self.pp()}"
        if k < 0.88:
            np, plural = self.animal_np()
            v = r.choice(_V_INTRANS)
            return f"{np} {v[2]}{self.opt_pp(0.5)}"
        subj, _ = self.char_subject()
        return f"{subj} went {r.choice(_MOTION)} the {r.choice(self.places)}{self.opt_adv(0.2)}"

    def sentence_past(self) -> str:
        r = self.rng
        k = r.random()
        if k < 0.55:
            s = self.clause_past()
        elif k < 0.7:
            s = f"{self.time_phrase()}, {self.clause_past()}"
        elif k < 0.82:
            s = f"{self.clause_past()}, {r.choice(['and', 'but', 'so'])} {self.clause_past()}"
        elif k < 0.9:
            s = f"{self.clause_past()} because {self.clause_past()}"
        else:
            s = f"When {self.clause_past()}, {self.clause_past()}"
        return _cap(s) + "."

    # --- speech (present tense, first and second person) --------------------------------------------------
    def utterance(self, addressee: str | None) -> tuple[str, bool]:
        """(text without final punctuation, is_question)."""
        r = self.rng
        k = r.random()
        sing, plur, _ = r.choice(_THINGS)
        if k < 0.12:
            return f"where is the {sing}", True
        if k < 0.2:
            return f"where are the {plur}", True
        if k < 0.3:
            return f"do you have {_a(r.choice(_ADJ) + ' ' + sing)}", True
        if k < 0.38:
            return f"how many {plur} do we need", True
        if k < 0.48:
            v = r.choice(_V_THING)
            return f"I {v[0]} the {sing} every day", False
        if k < 0.56:
            return f"you are very {r.choice(_FEEL)}", False
        if k < 0.64:
            n = r.randint(2, 12)
            return f"we need {self.count_word(n)} more {plur}", False
        if k < 0.72:
            return f"the {sing} is {self.pp()}", False
        if k < 0.78:
            return f"the {plur} are {r.choice(_ADJ)}", False
        if k < 0.84:
            return f"let us go to the {r.choice(self.places)}", False
        if k < 0.9 and addressee:
            return f"thank you, {addressee}", False
        if k < 0.95:
            name = self.chars[self.focus][0]
            return f"my name is {name}", False
        return f"I saw {self.other_char()} {self.pp()}", False

    def quote_sentence(self) -> str:
        r = self.rng
        speaker_idx = r.randrange(len(self.chars))
        self.focus = speaker_idx
        speaker = self.chars[speaker_idx][0]
        self.last = speaker_idx
        addressee = self.other_char() if r.random() < 0.5 else None
        text, q = self.utterance(addressee)
        text = _cap(text)
        verb = r.choice(_ASK) if q else r.choice(_SAY)
        end = "?" if q else ("!" if r.random() < 0.15 else ",")
        form = r.random()
        if form < 0.55:
            return f'"{text}{end}" {verb} {speaker}.'
        if form < 0.8:
            end = "?" if q else ("!" if end == "!" else ".")
            return f'{speaker} {verb}, "{text}{end}"'
        end2 = "?" if q else ","
        return f'"{text}{end2}" {speaker} {verb} {r.choice(_ADV[:9])}.'

    # --- counting, with arithmetic that stays consistent within the episode ------------------------------
    def counting_episode(self) -> list[str]:
        r = self.rng
        a, b = r.sample(range(len(self.chars)), 2)
        na, nb = self.chars[a][0], self.chars[b][0]
        sing, plur, _ = r.choice(_THINGS)
        n = r.randint(3, 12)
        m = r.randint(1, n - 1)
        self.focus = self.last = a
        gave = r.random() < 0.5
        out = [f"{na} had {self.count_word(n)} {plur}."]
        if gave:
            obj = sing if m == 1 else plur
            out.append(f"{_cap(_PRONOUNS[self.chars[a][1]][0])} gave {self.count_word(m)} {obj} to {nb}.")
            rest = n - m
            out.append(f"Now {na} had {self.count_word(rest)} {sing if rest == 1 else plur} left.")
        else:
            obj = sing if m == 1 else plur
            out.append(f"Then {nb} brought {self.count_word(m)} more {obj}.")
            out.append(f"Now {na} had {self.count_word(n + m)} {plur}.")
        return out

    def intro(self, i: int) -> str:
        r = self.rng
        name, pron = self.chars[i]
        self.last = i
        be = _PRONOUNS[pron][3]
        k = r.random()
        if k < 0.4:
            return f"{name} was {_a(r.choice(_ADJ + _FEEL) + ' ' + r.choice(_JOBS))} who lived in {self.town}."
        if k < 0.7:
            return f"There was once {_a(r.choice(_JOBS))} called {name}."
        return f"{name} {be} {_a(r.choice(_JOBS))} from {self.town}."


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


def generate_corpus(path: Path, n_docs: int, seed: int) -> Path:
    """Same seed, same bytes: `random.Random` is specified to be reproducible across platforms, and the file
    is written to a temporary name first so a crash never leaves a truncated corpus under the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for _ in range(n_docs):
            f.write(json.dumps({"text": generate_document(rng)}, ensure_ascii=False))
            f.write("\n")
    os.replace(tmp, path)
    return path


def read_corpus(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]


# ----------------------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------------------

def train_tokenizer(corpus_path: Path, out_dir: Path, vocab_size: int):
    """Byte-level BPE: every string round-trips exactly and nothing maps to <unk>, which keeps the pipeline's
    token accounting honest. The special tokens take Gemma's ids so code written against gemma-2 (BOS=2,
    EOS=1, PAD=0) needs no special case for the embedded model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(read_corpus(Path(corpus_path)), trainer=trainer)
    for i, t in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(t) != i:
            raise RuntimeError(f"tokenizer: {t} got id {tok.token_to_id(t)}, expected {i}")
    # Gemma's tokenizer prepends BOS to every encoded text (and to each side of a pair); the same template
    # here makes `tok(text)["input_ids"][0] == bos_token_id` hold for the embedded model too.
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B:1", special_tokens=[("<bos>", BOS_ID)])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )
    save_tokenizer(hf, Path(out_dir))
    return hf


def save_tokenizer(tokenizer, out_dir: Path) -> None:
    """transformers 5 records its own class name (TokenizersBackend); the alias it still exports,
    PreTrainedTokenizerFast, also loads in transformers 4, so the folder stays usable by either, like a hub
    checkpoint. BOS is added by the post-processor inside tokenizer.json: transformers 5 ignores (and does
    not save) `add_bos_token` whenever a tokenizer.json is present."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


# ----------------------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------------------

def tiny_gemma2_config(vocab_size: int):
    """Gemma 2's architecture at toy size: alternating sliding/global attention, GQA, soft-capping, the
    four RMSNorms per layer and tied embeddings all present, so every hook site the pipeline uses exists
    and behaves as it does in gemma-2-2b."""
    from transformers import Gemma2Config

    return Gemma2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        sliding_window=64,
        query_pre_attn_scalar=16,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        hidden_activation="gelu_pytorch_tanh",
        rms_norm_eps=1e-6,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        bos_token_id=BOS_ID,
        tie_word_embeddings=True,
        attn_implementation="eager",
    )


def pack_sequences(docs_ids: list[list[int]], ctx: int, bos_id: int, eos_id: int):
    """The tokenize stage's packing (documents joined by EOS, rows of ctx starting with BOS), as int64
    tensors: the model is trained on exactly what it will later be probed with."""
    import torch

    from tasks.lm.packing import pack_sequences as pack_rows

    return torch.from_numpy(pack_rows(docs_ids, ctx, bos_id, eos_id).astype("int64"))


@contextlib.contextmanager
def _deterministic_torch(threads: int):
    """Fixed thread count and deterministic kernels make CPU training bit-reproducible on one machine; the
    previous settings come back afterwards so a caller (a test session, a Ray worker) is not left changed."""
    import torch

    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    # Filling every fresh allocation with NaN only helps catch reads of uninitialised memory; it cost ~10%
    # of a training step here and changes no result.
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = prev_fill
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.set_num_threads(prev_threads)


def _special_ids(tokenizer) -> list[int]:
    return sorted({i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id,
                               tokenizer.unk_token_id) if i is not None})


def train_tiny_gemma2(
    corpus_path: Path,
    tokenizer,
    out_dir: Path,
    *,
    seed: int = BUILD_SEED,
    steps: int = 420,
    batch_size: int = 16,
    ctx: int = TRAIN_CTX,
    lr: float = 3e-3,
    warmup_steps: int = 30,
    heldout_fraction: float = 0.04,
    threads: int = 2,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Training length is a step count, not a wall-clock budget, so the same seed gives the same weights
    whatever else the machine is doing; the defaults take about a minute on two idle cores. Small batches
    and many steps: at this size the number of updates, not the batch noise, limits how much is learnt."""
    import torch
    import torch.nn.functional as F
    from transformers import Gemma2ForCausalLM

    out_dir = Path(out_dir)
    docs = read_corpus(Path(corpus_path))
    n_held = max(1, int(round(len(docs) * heldout_fraction)))
    if len(docs) <= n_held:
        raise ValueError(f"corpus has {len(docs)} documents; need more than the {n_held} held out")
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    train_rows = pack_sequences(ids[:-n_held], ctx, bos, eos)
    held_rows = pack_sequences(ids[-n_held:], ctx, bos, eos)
    vocab = len(tokenizer)
    special = torch.tensor(_special_ids(tokenizer))

    with _deterministic_torch(threads):
        torch.manual_seed(seed)
        model = Gemma2ForCausalLM(tiny_gemma2_config(vocab))
        model.train()
        decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
        no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
            lr=lr, betas=(0.9, 0.95), eps=1e-8)

        def lr_at(step: int) -> float:
            if step < warmup_steps:
                return lr * (step + 1) / warmup_steps
            t = (step - warmup_steps) / max(1, steps - warmup_steps)
            return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * t)))

        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(train_rows), generator=gen)
        cursor = 0
        t0 = time.perf_counter()
        for step in range(steps):
            if cursor + batch_size > len(order):
                order = torch.randperm(len(train_rows), generator=gen)
                cursor = 0
            batch = train_rows[order[cursor: cursor + batch_size]]
            cursor += batch_size
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            logits = model(input_ids=batch, use_cache=False).logits
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), batch[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if log is not None and (step % 50 == 0 or step == steps - 1):
                log(f"step {step:4d}  loss {loss.item():.4f}  {time.perf_counter() - t0:6.1f}s")
        train_seconds = time.perf_counter() - t0

        model.eval()
        targets = held_rows[:, 1:]
        keep = ~torch.isin(targets, special)
        total = 0.0
        with torch.no_grad():
            for i in range(0, len(held_rows), batch_size):
                b = held_rows[i: i + batch_size]
                logits = model(input_ids=b, use_cache=False).logits[:, :-1].double()
                ce = F.cross_entropy(logits.reshape(-1, vocab), b[:, 1:].reshape(-1), reduction="none")
                total += ce[keep[i: i + batch_size].reshape(-1)].sum().item()
        n_eval = int(keep.sum())
        heldout_loss = total / n_eval

        # Unigram baseline on exactly the same target tokens: frequencies from the training split, add-one
        # smoothed over the non-special vocabulary.
        train_tokens = train_rows[:, 1:].reshape(-1)
        train_tokens = train_tokens[~torch.isin(train_tokens, special)]
        counts = torch.bincount(train_tokens, minlength=vocab).double()
        counts[special] = 0.0
        n_ordinary = vocab - len(special)
        logp = torch.log((counts + 1.0) / (counts.sum() + n_ordinary))
        unigram_entropy = float(-logp[targets[keep]].mean())

        n_params = sum(p.numel() for p in model.parameters())
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)
    save_tokenizer(tokenizer, out_dir)

    stats = {
        "heldout_loss": heldout_loss,
        "unigram_entropy": unigram_entropy,
        "train_seconds": train_seconds,
        "n_params": n_params,
        "n_train_tokens": int(train_rows.numel()),
        "n_heldout_tokens": n_eval,
        "tokens_seen": steps * batch_size * ctx,
        "steps": steps,
        "batch_size": batch_size,
        "ctx": ctx,
        "seed": seed,
        "vocab_size": vocab,
        "version": EMBEDDED_VERSION,
    }
    (out_dir / STATS_FILE).write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    return stats


# ----------------------------------------------------------------------------------------------------------
# The cached build
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EmbeddedAssets:
    corpus_path: Path
    model_dir: Path
    stats: dict


def default_cache_dir() -> Path:
    env = os.environ.get("SCOPEFLOW_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "scopeflow"


def _assets_in(root: Path) -> EmbeddedAssets:
    stats = json.loads((root / "model" / STATS_FILE).read_text())
    manifest = json.loads((root / MANIFEST_FILE).read_text())
    stats = {**stats, **{k: v for k, v in manifest.items() if k not in stats}}
    return EmbeddedAssets(corpus_path=root / "corpus.jsonl", model_dir=root / "model", stats=stats)


def build_embedded_assets(root: Path, *, seed: int = BUILD_SEED, n_docs: int = BUILD_N_DOCS,
                          vocab_size: int = BUILD_VOCAB_SIZE, log: Callable[[str], None] | None = None,
                          **train_kwargs) -> None:
    """Builds everything into `root` (which must not be the final location: the caller renames it into
    place), writing the COMPLETE marker last."""
    t0 = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    corpus = generate_corpus(root / "corpus.jsonl", n_docs, seed)
    t_corpus = time.perf_counter() - t0
    tok = train_tokenizer(corpus, root / "tokenizer", vocab_size)
    t_tok = time.perf_counter() - t0 - t_corpus
    train_tiny_gemma2(corpus, tok, root / "model", seed=seed, log=log, **train_kwargs)
    shutil.rmtree(root / "tokenizer")  # its files now live in model/, next to the weights
    manifest = {
        "version": EMBEDDED_VERSION,
        "seed": seed,
        "n_docs": n_docs,
        "corpus_bytes": corpus.stat().st_size,
        "corpus_seconds": t_corpus,
        "tokenizer_seconds": t_tok,
        "build_seconds": time.perf_counter() - t0,
    }
    (root / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    _write_synced(root / COMPLETE_MARKER, f"embedded-v{EMBEDDED_VERSION}\n")
    _fsync_tree(root)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_tree(root: Path) -> None:
    """The rename that publishes the build must not reach disk before the files it publishes."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _file_lock(path: Path):
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def ensure_embedded_assets(cache_dir: Path | None = None, *,
                           log: Callable[[str], None] | None = None) -> EmbeddedAssets:
    """Cheap when already built (one stat and two small reads, no lock). Otherwise one process builds under
    an exclusive lock while others wait, then find the finished build. The build happens in a private
    folder that is renamed into place only once complete, so a crash at any point leaves either nothing
    or a whole build under the final name."""
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    root = base / f"embedded-v{EMBEDDED_VERSION}"
    if (root / COMPLETE_MARKER).is_file():
        return _assets_in(root)
    base.mkdir(parents=True, exist_ok=True)
    with _file_lock(base / f"embedded-v{EMBEDDED_VERSION}.lock"):
        if (root / COMPLETE_MARKER).is_file():
            return _assets_in(root)
        # Holding the lock, any leftover build folder belongs to a builder that died: reclaim the space.
        for stale in base.glob(f".embedded-v{EMBEDDED_VERSION}.*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = base / f".embedded-v{EMBEDDED_VERSION}.build-{os.getpid()}"
        build_embedded_assets(tmp, log=log)
        if root.exists():  # incomplete (no marker): move it aside first, since rename won't replace a folder
            aside = base / f".embedded-v{EMBEDDED_VERSION}.old-{os.getpid()}"
            os.rename(root, aside)
            shutil.rmtree(aside, ignore_errors=True)
        os.rename(tmp, root)
        fd = os.open(base, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return _assets_in(root)


def resolve_embedded(name: str, cache_dir: Path | None = None) -> Path | None:
    """Maps the embedded names used in suite configs to real paths, building on first use; any other
    string is not ours and gets None, so callers can fall through to their own resolution."""
    if name == EMBEDDED_CORPUS:
        return ensure_embedded_assets(cache_dir).corpus_path
    if name == EMBEDDED_MODEL:
        return ensure_embedded_assets(cache_dir).model_dir
    return None


if __name__ == "__main__":
    t_start = time.perf_counter()
    assets = ensure_embedded_assets(log=print)
    print(f"corpus: {assets.corpus_path}")
    print(f"model:  {assets.model_dir}")
    for key in ("heldout_loss", "unigram_entropy", "train_seconds", "build_seconds", "n_params",
                "n_train_tokens", "n_heldout_tokens", "version"):
        print(f"{key:>16}: {assets.stats.get(key)}")
    print(f"(this call: {time.perf_counter() - t_start:.1f}s)")
