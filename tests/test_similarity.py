"""similarity.py: near-duplicate prompts (MinHash LSH confirmed by exact Jaccard) and benchmark overlap (word
n-grams). Their use in the pipeline (counts, order, --dedup, --decontaminate) is tested in test_prepare_data.py."""

from pathlib import Path

import utils
from similarity import BenchmarkIndex, NearDuplicateIndex

EVAL_DIR = Path(__file__).resolve().parents[1] / "data" / "eval"


def test_near_duplicate_index_threshold():
    base = (
        "Let n be the number of ordered pairs of positive integers x and y such that x plus y equals twenty, "
        "x is even, y is odd and neither number exceeds fifteen. Find the remainder when n is divided by one thousand."
    )
    edited = base.replace("twenty", "thirty")
    a, b = NearDuplicateIndex.shingles(base), NearDuplicateIndex.shingles(edited)
    assert 0.8 <= len(a & b) / len(a | b) < 0.95  # one word changed
    index = NearDuplicateIndex(threshold=0.8)
    assert index.add_if_new(base)
    assert not index.add_if_new(edited)
    assert index.add_if_new(
        "A circle of radius 3 is inscribed in a square. What is the area of the square outside the circle?"
    )
    strict = NearDuplicateIndex(threshold=0.95)
    assert strict.add_if_new(base) and strict.add_if_new(edited)
    assert not strict.add_if_new(base.upper() + "  ")


def test_benchmark_index_catches_a_lightly_edited_problem_and_a_pasted_one():
    aime = utils.read_jsonl(EVAL_DIR / "aime24.jsonl")[0]["problem"]
    edited = "Consider this. " + aime.replace("Aya", "Maya").replace("$9$", "$10$") + " Show your work."
    assert edited != aime
    index = BenchmarkIndex.from_dir(str(EVAL_DIR), n=13, threshold=0.5)
    assert index.match(edited) == "aime24"
    assert index.match("Read two integers and print their sum.") is None
    lcb = utils.read_jsonl(EVAL_DIR / "livecodebench.jsonl")[5]["problem"]
    assert index.match("Solve in Python.\n" + lcb) == "livecodebench"
    short = BenchmarkIndex([("toy", "Add two and two.")], n=13, threshold=0.5)  # shorter than n words: whole match
    assert short.match("add two AND two") == "toy" and short.match("Add two and three.") is None
