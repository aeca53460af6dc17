"""Answer strings as the official VQA evaluation compares them.

The evaluation normalizes each answer before matching it against the ten
human answers: punctuation is dropped (or turned into a space), a period
that is not a decimal point is dropped, the text is lower-cased, number
words become digits, articles go, and contractions written without their
apostrophes get them back. `normalize` does the same steps in that order.

Departures, deliberate: the official code skips normalization when all ten
humans gave the same string; here every answer is normalized (VQA v2's
answers are already lower case and mostly clean, so this rarely matters).
Contractions whose apostrophe-free spelling is an ordinary word ("well",
"were", "its", "ill", "shell", "hell", "wed", "shed") are left alone.
"""

from __future__ import annotations

import re

_PUNCTUATION = ';/[]"{}()=+\\_-><@`,?!'
_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_NON_DECIMAL_PERIOD = re.compile(r"\.(?!\d)")
_NUMBERS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = frozenset({"a", "an", "the"})
# English contractions; each is restored from its spellings without one or
# all of its apostrophes.
_CONTRACTIONS = """
ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't
hadn't've hasn't haven't he'd he'd've he's how'd how'll how's i'd i'd've i'm
i've isn't it'd it'd've it'll let's ma'am mightn't mightn't've might've
mustn't must've needn't not've o'clock oughtn't shan't she'd've she's
should've shouldn't shouldn't've somebody'd somebody'd've somebody'll
somebody's someone'd someone'd've someone'll someone's something'd
something'd've something'll that's there'd there'd've there're there's
they'd they'd've they'll they're they've wasn't we'd've we've weren't
what'll what're what's what've when's where'd where's where've who'd
who'd've who'll who're who's who've why'll why're why's won't would've
wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've you'll you're
you've
""".split()  # noqa: SIM905  (a word list reads better as text)
_ORDINARY_WORDS = frozenset({"well", "were", "its", "ill", "shell", "hell", "wed", "shed"})


def _restorations() -> dict[str, str]:
    table = {}
    for word in _CONTRACTIONS:
        cuts = [i for i, c in enumerate(word) if c == "'"]
        variants = {word.replace("'", "")}
        variants |= {word[:i] + word[i + 1 :] for i in cuts} if len(cuts) > 1 else set()
        for variant in variants - _ORDINARY_WORDS - {word}:
            table[variant] = word
    return table


_RESTORE = _restorations()


def _punctuation(text: str) -> str:
    out = text
    drop = _DIGIT_COMMA_DIGIT.search(text) is not None
    for p in _PUNCTUATION:
        if drop or f"{p} " in text or f" {p}" in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _NON_DECIMAL_PERIOD.sub("", out)


def _words(text: str) -> str:
    words = []
    for word in text.lower().split():
        word = _NUMBERS.get(word, word)
        if word not in _ARTICLES:
            words.append(_RESTORE.get(word, word))
    return " ".join(words)


def normalize(answer: str) -> str:
    """`answer` as the official evaluation compares it."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    return _words(_punctuation(text))
