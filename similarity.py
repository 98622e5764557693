"""Text similarity for prepare_data.py: which prompts repeat one another (NearDuplicateIndex, MinHash LSH over word
3-grams) and which overlap an evaluation benchmark (BenchmarkIndex, word n-grams as in GPT-3's decontamination).
Both compare prompts without their instruction boilerplate (markup.BOILERPLATE), word by word after NFKC folding."""

from __future__ import annotations

import re
import unicodedata
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

import utils
from utils import DataError

BENCHMARKS = ("aime24", "amc23", "math500", "olympiadbench", "livecodebench")


def words(text: str) -> list[str]:
    return re.findall(r"\w+", unicodedata.normalize("NFKC", text).lower())


class BenchmarkIndex:
    """Word n-grams of every benchmark problem. A prompt is contaminated when it shares with one benchmark item at least
    `threshold` of the shorter one's n-grams: robust to light edits, and to a problem pasted into a longer prompt."""

    def __init__(self, items: list[tuple[str, str]], n: int, threshold: float):
        self.n, self.threshold, self.names, self.sizes = n, threshold, [], []
        self.owner: dict[str, int] = {}
        self.whole: dict[str, int] = {}  # prompts shorter than n words can only match whole
        for i, (name, text) in enumerate(items):
            grams = self.ngrams(words(text))
            self.names.append(name)
            self.sizes.append(len(grams))
            self.owner.update(dict.fromkeys(grams, i))
            self.whole[" ".join(words(text))] = i

    @classmethod
    def from_dir(cls, eval_dir: str, n: int, threshold: float) -> "BenchmarkIndex":
        items = []
        for name in BENCHMARKS:
            for line, record in utils.iter_json_records(Path(eval_dir) / f"{name}.jsonl"):
                text = next((record[k] for k in ("problem", "question", "prompt") if record.get(k) is not None), None)
                if not isinstance(text, str):
                    raise DataError(f"{eval_dir}/{name}.jsonl:{line}: field 'problem' (or 'question'/'prompt') missing")
                items.append((name, text))
        return cls(items, n, threshold)

    def ngrams(self, tokens: list[str]) -> set[str]:
        return {" ".join(tokens[i : i + self.n]) for i in range(len(tokens) - self.n + 1)}

    def match(self, text: str) -> str | None:
        """The benchmark a prompt overlaps, or None."""
        tokens = words(text)
        grams = self.ngrams(tokens)
        if not grams:
            hit = self.whole.get(" ".join(tokens))
            return None if hit is None else self.names[hit]
        shared = Counter(self.owner[g] for g in grams if g in self.owner)
        for item, count in shared.most_common():
            if count / max(1, min(len(grams), self.sizes[item])) >= self.threshold:
                return self.names[item]
        return None


class NearDuplicateIndex:
    """MinHash LSH over word-3-gram shingles; LSH candidates are confirmed by their exact Jaccard similarity."""

    PRIME = (1 << 61) - 1

    def __init__(self, threshold: float, num_perm: int = 128, seed: int = 0):
        rng = np.random.default_rng(seed)
        # a, b, shingle < 2^32 keep a * shingle + b below 2^64: exact universal hashing in uint64.
        self.a = rng.integers(1, 1 << 32, num_perm, dtype=np.uint64)
        self.b = rng.integers(0, 1 << 32, num_perm, dtype=np.uint64)
        self.threshold = threshold
        # The (bands b, rows r) whose S-curve midpoint (1/b)^(1/r) is highest at or below the threshold: few misses.
        midpoint = {(num_perm // r, r): (r / num_perm) ** (1 / r) for r in range(1, num_perm + 1) if num_perm % r == 0}
        below = [shape for shape, m in midpoint.items() if m <= threshold]
        self.bands, self.rows = max(below, key=midpoint.get, default=(num_perm, 1))
        self.buckets: dict[tuple[int, bytes], list[int]] = defaultdict(list)
        self.shingle_sets: list[set[int]] = []

    @staticmethod
    def shingles(text: str) -> set[int]:
        tokens = words(text)
        grams = [" ".join(tokens[i : i + 3]) for i in range(max(1, len(tokens) - 2))]
        return {zlib.crc32(g.encode()) for g in grams}

    def add_if_new(self, text: str) -> bool:
        """Index the text and return True, unless it is a near duplicate of one already indexed."""
        shingles = self.shingles(text)
        x = np.fromiter(shingles, dtype=np.uint64, count=len(shingles))
        signature = ((np.outer(x, self.a) + self.b) % np.uint64(self.PRIME)).min(axis=0)
        keys = [(band, signature[band * self.rows : (band + 1) * self.rows].tobytes()) for band in range(self.bands)]
        candidates = {j for key in keys for j in self.buckets.get(key, ())}
        for j in candidates:
            other = self.shingle_sets[j]
            if len(shingles & other) / len(shingles | other) >= self.threshold:
                return False
        for key in keys:
            self.buckets[key].append(len(self.shingle_sets))
        self.shingle_sets.append(shingles)
        return True
