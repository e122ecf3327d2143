"""Answer scoring: normalised exact match, ROUGE-L F1 and a CIDEr-like overlap.

Pure Python, no dependencies.  All scores are in [0, 1].
"""

from __future__ import annotations

import math
import re
from collections import Counter

from .scenes import NUMBER_WORDS

_PUNCT = re.compile(r"[^\w\s]")
_ARTICLES = {"the", "a", "an"}


def normalize(text: str) -> str:
    """Lower case, punctuation dropped, digits spelled out, spaces collapsed."""
    words = _PUNCT.sub(" ", text.lower()).split()
    words = [NUMBER_WORDS[int(w)] if w.isdigit() and int(w) < len(NUMBER_WORDS) else w
             for w in words]
    return " ".join(words)


def exact_match(prediction: str, answer: str) -> float:
    """1.0 when the answers agree after ``normalize`` (a leading article is ignored)."""
    def strip(s: str) -> str:
        words = normalize(s).split()
        if words and words[0] in _ARTICLES:
            words = words[1:]
        return " ".join(words)

    return float(strip(prediction) == strip(answer))


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, answer: str) -> float:
    """ROUGE-L F1 over normalised word tokens (1.0 for two empty strings)."""
    p, r = normalize(prediction).split(), normalize(answer).split()
    if not p and not r:
        return 1.0
    lcs = _lcs(p, r)
    if lcs == 0:
        return 0.0
    prec, rec = lcs / len(p), lcs / len(r)
    return 2 * prec * rec / (prec + rec)


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))


def cider_like(prediction: str, answer: str, max_n: int = 4, sigma: float = 6.0) -> float:
    """CIDEr-D-like score against one reference, without IDF weights.

    Mean over n = 1..max_n of the cosine similarity of clipped n-gram count
    vectors, times CIDEr-D's length penalty exp(-(len_p - len_r)^2 / 2 sigma^2).
    Unlike CIDEr it is bounded by 1 (no x10 scale, no corpus IDF).
    """
    p, r = normalize(prediction).split(), normalize(answer).split()
    if not p or not r:
        return float(p == r)
    total = 0.0
    for n in range(1, max_n + 1):
        cp, cr = _ngrams(p, n), _ngrams(r, n)
        if not cp or not cr:
            continue
        dot = sum(min(v, cr[g]) * cr[g] for g, v in cp.items() if g in cr)
        norm = math.sqrt(sum(v * v for v in cp.values())) * math.sqrt(sum(v * v for v in cr.values()))
        total += dot / norm
    penalty = math.exp(-((len(p) - len(r)) ** 2) / (2 * sigma ** 2))
    return total / max_n * penalty
