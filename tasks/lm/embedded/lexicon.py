"""The corpus grammar's vocabulary: word lists with their inflections, and two spelling helpers."""
from __future__ import annotations

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
