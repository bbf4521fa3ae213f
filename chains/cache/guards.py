"""Cheap checks that veto a semantic-cache hit the vector search got wrong.

Embeddings put "What was the company's revenue in 2023?" and "... in 2022?" next to each other
(cosine 0.95 with MiniLM), yet their answers differ. After the nearest-neighbour search, a
hit must also pass these guards: no large NLP model, a regex and a few word lists, microseconds
per pair. Each guard is a pure function of the two question texts, so the cache can run them in
any thread and the benchmark can measure each one on its own.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Literal

GuardName = Literal["numbers", "negation", "entities", "opposites", "content"]
ALL_GUARDS: tuple[GuardName, ...] = ("numbers", "negation", "entities", "opposites", "content")

_NUMBER_WORDS = {
    "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13",
    "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17", "eighteen": "18",
    "nineteen": "19", "twenty": "20", "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60",
    "seventy": "70", "eighty": "80", "ninety": "90", "hundred": "100", "thousand": "1000",
    "million": "1000000", "billion": "1000000000", "hundreds": "100", "thousands": "1000",
    "millions": "1000000", "billions": "1000000000", "dozen": "12", "double": "2",
    "twice": "2", "triple": "3",
    "second": "2nd", "third": "3rd", "fourth": "4th", "fifth": "5th", "sixth": "6th",
    "seventh": "7th", "eighth": "8th", "ninth": "9th", "tenth": "10th",
}  # fmt: skip
# "one", "first" and "zero" are left out on purpose: "which one", "do this first", "zero-copy".

_NEGATIONS = {
    "not", "no", "never", "none", "nobody", "nothing", "neither", "nor", "cannot", "without",
    "nowhere", "unable", "lack", "lacks", "lacking",
}  # fmt: skip

# Words that exclude each other: a question using one where the other question uses another
# asks something else ("per month" / "per year"). Compared on a crude stem ("uploading" = "upload").
_EXCLUSIVE = [
    ("before", "after"), ("first", "last"), ("minimum", "maximum"), ("min", "max"), ("increase", "decrease"),
    ("enable", "disable"), ("add", "remove"), ("upload", "download"), ("import", "export"),
    ("start", "stop"), ("largest", "smallest"), ("biggest", "smallest"), ("highest", "lowest"),
    ("cheapest", "expensive"), ("fastest", "slowest"), ("earliest", "latest"), ("input", "output"),
    ("encode", "decode"), ("push", "pull"), ("allow", "deny"), ("include", "exclude"), ("open", "close"),
    ("upper", "lower"), ("more", "less", "fewer"), ("above", "below"), ("inbound", "outbound"),
    ("incoming", "outgoing"), ("buy", "sell"), ("win", "lose"), ("accept", "reject"), ("lock", "unlock"),
    ("install", "uninstall"), ("read", "write"), ("train", "test"), ("north", "south"), ("east", "west"),
    ("men", "women"), ("male", "female"), ("internal", "external"), ("public", "private"),
    ("success", "failure"), ("advantage", "disadvantage"), ("pros", "cons"), ("true", "false"),
    ("synchronous", "asynchronous"), ("sync", "async"), ("online", "offline"), ("weekday", "weekend"),
    ("second", "minute", "hour", "day", "week", "month", "quarter", "year"),
    ("hourly", "daily", "weekly", "monthly", "quarterly", "yearly", "annual"),
    ("kb", "mb", "gb", "tb"), ("kilobyte", "megabyte", "gigabyte", "terabyte"), ("cpu", "gpu", "tpu"),
    ("windows", "linux", "macos"), ("local", "remote"), ("full-time", "part-time"), ("over", "under"),
    ("when", "where", "who", "why"),
]  # fmt: skip

# Capitalised words that are not names (sentence starts, question words, pronouns).
_COMMON = frozenset(
    """a an the this that these those there here i you he she it we they me my your our their its
    what which who whom whose when where why how whether if is are was were be been being am do does did
    done can could should would will shall may might must have has had having and or but so yet for of
    in on at to from by with about into over under as than then also just only any some all each every
    please tell explain describe give list show find yes no not ok okay hi hello thanks thank dear
    after before during since until while between among per via vs versus""".split()  # noqa: SIM905
)

# Words that carry no slot of their own: function words, question framing, and the filler of
# "what is the best way to ..." questions. Everything else is a content word the other question
# must share (after stemming and the synonym table) for the "content" guard to let a hit through.
_FRAME = frozenset(
    """a an the this that these those there here i you he she it we they me my your our their its us him her them
    what which who whom whose when where why how whether if is are was were be been being am do does did doing
    done can could should would will shall may might must have has had having and or but so yet for of in on at
    to from by with about into as than then also just only any some all each every please tell explain describe
    give list show find ok okay hi hello thanks thank dear s t d ll m re ve get got getting go going
    best good great better way ways really actually possible exactly anyone someone something anything thing
    things kind sort ever lot lots much many one ones else other another up out off own same very most more
    know need want like make made use using used able try trying let take takes taking took put come greatest
    between during within without no not never none nor per isn aren wasn weren don doesn didn won wouldn
    shouldn couldn hasn haven hadn""".split()  # noqa: SIM905
) | frozenset(_NUMBER_WORDS)  # numbers are the "numbers" guard's to compare

# Words that mean the same in a question, mapped to one representative (compared after stemming).
_SYNONYMS = [
    ("quick", "fast", "quickly", "fastest", "quickest", "rapid", "rapidly", "speedy"),
    ("big", "large", "huge"), ("small", "little", "tiny"), ("buy", "purchase"), ("start", "begin", "launch"),
    ("rich", "wealthy", "richest", "wealthiest"), ("remove", "rid", "eliminate"),
    ("father", "dad"), ("mother", "mom", "mum"), ("plane", "airplane", "aeroplane", "aircraft"),
    ("car", "automobile"), ("symptom", "sign"), ("advantage", "pro", "benefit"), ("disadvantage", "con", "drawback"),
    ("earn", "paid", "salary", "wage"), ("job", "work", "employment", "hired", "hire"), ("die", "death", "died"),
    ("cost", "price"), ("ocean", "sea"), ("permanent", "permanently", "forever"),
    ("discover", "discovery", "discoveries"), ("quit", "stop"), ("movie", "film"),
    ("doctor", "physician"), ("child", "kid", "children", "kids"), ("people", "person", "everyone", "everybody"),
    ("learn", "learning", "study"), ("drive", "driving"), ("visit", "travel", "trip"),
    ("happen", "happened", "occur"), ("cause", "reason", "why"), ("word", "document"),
    ("file", "document"), ("gift", "present"), ("money", "cash"),
]  # fmt: skip

_TOKEN = re.compile(r"`[^`\s]+`|[\w$€£%][\w.\-/'$€£%]*[\w%](?:\(\))?|[\w$€£%]")
_NUMBER = re.compile(r"\d+(?:[.,:]\d+)*(?!\d|st\b|nd\b|rd\b|th\b)")  # ordinals are handled per token
_ORDINAL = re.compile(r"^(\d+)(?:st|nd|rd|th)$")


@dataclass(frozen=True)
class QuestionFeatures:
    """What the guards compare, extracted once per question text."""

    numbers: frozenset[str]
    negated: bool
    entities: frozenset[str]
    words: frozenset[str]
    stems: frozenset[str]
    content: frozenset[str]


@functools.lru_cache(maxsize=4096)
def features(text: str) -> QuestionFeatures:
    """Numbers, negation, names and words of a question (cached: the same cached question recurs)."""
    text = text.replace("\u2019", "'")
    numbers: set[str] = set()
    entities: set[str] = set()
    words: set[str] = set()
    negated = False
    for match in _TOKEN.finditer(text):
        raw = match.group(0)
        if raw.startswith("`"):
            name = _normal_identifier(raw.strip("`"))
            entities.add(name)
            words.add(name)
            continue
        token = _strip_possessive(raw.rstrip(".")).strip("()") or raw
        lower = token.lower()
        words.add(lower)
        words.update(part for part in re.split(r"[-/.]", lower) if part)
        numbers.update(n for part in {lower, *lower.split("-")} for n in _number_word(part))
        if lower in _NEGATIONS or lower.endswith("n't"):
            negated = True
        before = text[: match.start()].rstrip(" \t\"'([{*-")
        sentence_start = not before or before[-1] in ".?!:;\n"
        if _looks_like_name(token, sentence_start):
            entities.add(_normal_identifier(token))
    # Digits come from the whole text: the tokenizer splits "1,500" at the comma.
    for num in _NUMBER.findall(text):
        numbers.add(num.replace(",", "") if re.fullmatch(r"\d{1,3}(?:,\d{3})+", num) else num)
    stems = frozenset(_stem(w) for w in words)
    content = frozenset(_concept(w) for w in re.findall(r"\b[a-z][a-z+#]*", text.lower()) if w not in _FRAME)
    return QuestionFeatures(frozenset(numbers), negated, frozenset(entities), frozenset(words), stems, content)


def rejection(query: str, cached: str, guards: Collection[GuardName] = ALL_GUARDS) -> GuardName | None:
    """The first guard that says the two questions ask different things, or None to accept the hit."""
    if query == cached:
        return None
    a, b = features(query), features(cached)
    for name in guards:
        if _CHECKS[name](a, b):
            return name
    return None


def _numbers_differ(a: QuestionFeatures, b: QuestionFeatures) -> bool:
    return a.numbers != b.numbers


def _negation_differs(a: QuestionFeatures, b: QuestionFeatures) -> bool:
    return a.negated != b.negated


def _entities_differ(a: QuestionFeatures, b: QuestionFeatures) -> bool:
    """A name on either side that the other never mentions (in any case) means another subject."""
    return any(not _mentions(b, e) for e in a.entities) or any(not _mentions(a, e) for e in b.entities)


def _opposites_swapped(a: QuestionFeatures, b: QuestionFeatures) -> bool:
    """One side uses a word of an exclusive group that the other lacks, and the other uses another."""
    return any((a.stems & group) - b.stems and (b.stems & group) - a.stems for group in _exclusive_stems())


def _content_differs(a: QuestionFeatures, b: QuestionFeatures) -> bool:
    """A content word (stemmed, synonyms folded) in one question that the other lacks: the two
    differ in a slot (object, place, person, time, qualifier) the embedding barely weighs."""
    return a.content != b.content


_CHECKS: dict[GuardName, Callable[[QuestionFeatures, QuestionFeatures], bool]] = {
    "numbers": _numbers_differ,
    "negation": _negation_differs,
    "entities": _entities_differ,
    "opposites": _opposites_swapped,
    "content": _content_differs,
}


def _mentions(f: QuestionFeatures, entity: str) -> bool:
    """`datasets.Audio` is mentioned by "Audio"; "Hugging-Face" by "Hugging Face"."""
    parts = [p for p in re.split(r"[-/.]", entity) if p]
    return entity in f.words or (bool(parts) and (parts[-1] in f.words or all(p in f.words for p in parts)))


def _number_word(lower: str) -> set[str]:
    """Number words and ordinals ("twenty" -> 20, "2nd"); plain digits come from the whole text."""
    if lower in _NUMBER_WORDS:
        return {_NUMBER_WORDS[lower]}
    ordinal = _ORDINAL.match(lower)
    return {ordinal.group(1) + _ordinal_suffix(int(ordinal.group(1)))} if ordinal else set()


def _ordinal_suffix(n: int) -> str:
    if n % 100 in (11, 12, 13):
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def _looks_like_name(token: str, sentence_start: bool) -> bool:
    """Title-case words mid-sentence, acronyms, and code identifiers (snake_case, CamelCase, calls)."""
    if token.lower() in _COMMON or len(token) < 2:
        return False
    if any(c in token for c in "_(") or re.search(r"[a-z][A-Z]", token):
        return True
    if token.isupper() and any(c.isalpha() for c in token):
        return True
    if token[0].isalpha() and re.search(r"\d", token):
        return True  # GPT-4, v2, A100: versions and model names (not 2nd, 10k, 5pm: those are numbers)
    return token[0].isupper() and not sentence_start


def _normal_identifier(token: str) -> str:
    return token.lower().strip("()").rstrip(".")


def _strip_possessive(token: str) -> str:
    return token[:-2] if token.lower().endswith("'s") else token


@functools.cache
def _exclusive_stems() -> list[frozenset[str]]:
    return [frozenset(_stem(w) for w in group) for group in _EXCLUSIVE]


@functools.lru_cache(maxsize=65536)
def _concept(word: str) -> str:
    """The Snowball stem of a word, with synonyms folded onto one stem."""
    stem = str(_snowball().stemWord(word))
    return _synonym_stems().get(stem, stem)


@functools.cache
def _snowball() -> Any:
    import Stemmer

    return Stemmer.Stemmer("english")


@functools.cache
def _synonym_stems() -> dict[str, str]:
    table: dict[str, str] = {}
    for group in _SYNONYMS:
        head = str(_snowball().stemWord(group[0]))
        table.update({str(_snowball().stemWord(w)): table.get(head, head) for w in group})
    return table


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s", "e"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word
