"""`filterd lists suggest`: names the network looked up, that filterd forwarded, and that look like the
chat-roulette rules: for an admin to review and block with `filterd block`. The list never learns by itself.

A name is suggested when its registrable label (the one under the public suffix)
- is one edit away from a brand (a brand rule `omegle.*`, or a word of a pattern `/omegle/`): `omeglle`, `chatibb`;
- holds a brand as part of a longer label: `chatibfree`, `myshagle`;
- holds a word the name patterns look for (`roulette`, `stranger`, `videochat`, `sohbet`, ...) that a pattern did
  not match, e.g. because its surroundings differ.
Pure: names and counts in, suggestions out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from filterd.blocklists.rules import Suffixes

_WORD = re.compile(r"[a-z]{4,}")
#: Words in patterns that are regex plumbing or too common to suggest anything on their own.
_NOT_WORDS = frozenset({"chat", "live", "free", "video", "http", "www", "com", "info", "online", "site", "tchat"})


@dataclass(frozen=True, slots=True)
class Suggestion:
    name: str
    count: int
    reason: str


def pattern_words(patterns: Iterable[str]) -> set[str]:
    """The literal words (4+ letters) in pattern sources: `(^|[.-])chat-?roulette` -> {roulette}."""
    words: set[str] = set()
    for pattern in patterns:
        cleaned = re.sub(r"\\.|\[[^]]*\]|\{[^}]*\}|[?*+^$|()]", " ", pattern)
        words.update(w for w in _WORD.findall(cleaned) if w not in _NOT_WORDS)
    return words


def one_edit(a: str, b: str) -> bool:
    """Whether `a` and `b` differ by exactly one insertion, deletion or substitution."""
    if a == b or abs(len(a) - len(b)) > 1:
        return False
    if len(a) > len(b):
        a, b = b, a
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    return a[i:] == b[i + 1 :] if len(a) < len(b) else a[i + 1 :] == b[i + 1 :]


def registrable_label(name: str, suffixes: Suffixes) -> str | None:
    labels = name.split(".")
    for i in range(1, len(labels)):
        if suffixes.is_public(".".join(labels[i:])):
            return labels[i - 1]
    return None


def suggest(
    counts: Mapping[str, int], brands: set[str], words: set[str], suffixes: Suffixes, limit: int = 100
) -> list[Suggestion]:
    """Suggestions for forwarded names (`counts`: name -> lookups), most looked-up first."""
    long_brands = {b for b in brands | words if len(b) >= 5}  # a pattern's word is a brand too (omegle)
    out: list[Suggestion] = []
    for name, count in counts.items():
        label = registrable_label(name, suffixes)
        if not label:
            continue
        reason = None
        near = next((b for b in long_brands if one_edit(label, b)), None)
        if near is not None:
            reason = f"one letter away from the brand {near}"
        else:
            inside = next((b for b in brands if len(b) >= 5 and b in label and b != label), None)
            if inside is not None:
                reason = f"holds the brand {inside}"
            else:
                word = next((w for w in sorted(words) if w in name), None)
                if word is not None:
                    reason = f"holds the word {word!r} that the chat-roulette patterns look for"
        if reason is not None:
            out.append(Suggestion(name, count, reason))
    out.sort(key=lambda s: (-s.count, s.name))
    return out[:limit]
