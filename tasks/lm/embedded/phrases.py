"""Per-document grammar state and the phrases, clauses and sentences built from it."""
from __future__ import annotations

import random

from tasks.lm.embedded.lexicon import (
    _ADJ,
    _ADV,
    _ANIMATE,
    _ASK,
    _CODAS,
    _DAYS,
    _FEEL,
    _JOBS,
    _MONTHS,
    _MOTION,
    _NAMES,
    _NUMWORDS,
    _ONSETS,
    _PLACES,
    _PREPS,
    _PRONOUNS,
    _SAY,
    _THINGS,
    _TIMES,
    _V_INTRANS,
    _V_PERSON,
    _V_THING,
    _VOWELS,
    _a,
    _cap,
)


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
