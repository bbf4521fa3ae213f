"""The cache guards: each one vetoes its kind of near miss and lets true paraphrases through."""

from __future__ import annotations

import pytest

from chains.cache_guards import ALL_GUARDS, features, rejection


@pytest.mark.parametrize(
    ("query", "cached", "guard"),
    [
        ("What was our revenue in 2023?", "What was our revenue in 2024?", "numbers"),
        ("Is the refund window 30 days?", "Is the refund window 14 days?", "numbers"),
        ("Can I bring two guests?", "Can I bring three guests?", "numbers"),
        ("What changed in version 2.10.0?", "What changed in version 2.9.1?", "numbers"),
        ("How much is shipping for orders over $100?", "How much is shipping for orders?", "numbers"),
        ("Can I run the model without a GPU?", "Can I run the model with a GPU?", "negation"),
        ("Why doesn't the upload work?", "Why does the upload work?", "negation"),
        ("Is the API not free?", "Is the API free?", "negation"),
        ("What is the capital of France?", "What is the capital of Germany?", "entities"),
        ("what is the capital of france", "What is the capital of Germany?", "entities"),
        ("How many people work at Acme?", "How many people work at Globex?", "entities"),
        ("What does `push_to_hub()` return?", "What does `save_to_disk()` return?", "entities"),
        ("How do I upload a file?", "How do I download a file?", "opposites"),
        ("What does the Pro plan cost per month?", "What does the Pro plan cost per year?", "opposites"),
        ("Which model is the fastest?", "Which model is the slowest?", "opposites"),
    ],
)
def test_each_guard_catches_its_near_miss(query: str, cached: str, guard: str) -> None:
    assert rejection(query, cached) == guard
    assert rejection(query, cached, [g for g in ALL_GUARDS if g != guard]) is None


@pytest.mark.parametrize(
    ("query", "cached"),
    [
        ("What is the monthly price of the Pro plan?", "How much does the Pro plan cost per month?"),
        ("Who is the author of Hamlet?", "Who wrote Hamlet?"),
        ("how many employees does acme have", "How many employees does Acme have?"),
        ("Can I get two tickets?", "Is it possible to buy 2 tickets?"),
        ("Isn't the API free?", "Is the API not free?"),
        ("How do I call `push_to_hub`?", "How do I use push_to_hub()?"),
        ("What does datasets.Audio do?", "What does the Audio feature do?"),
        ("It costs 1,000 dollars?", "Does it cost 1000 dollars?"),
        ("Which one is faster?", "Which is faster?"),
        ("Who sits on the 2nd floor?", "Who is on the second floor?"),
    ],
)
def test_paraphrases_pass_every_guard(query: str, cached: str) -> None:
    assert rejection(query, cached) is None


def test_identical_text_is_never_rejected() -> None:
    text = "Is the 2nd floor of Building B not open on weekends?"
    assert rejection(text, text) is None


def test_features_normalise_what_they_compare() -> None:
    f = features("Does Acme's v2 API cost twenty dollars or 1,500 euros in the second quarter? It doesn’t.")
    assert f.numbers == {"2", "20", "1500", "2nd"}
    assert f.negated  # the curly apostrophe in "doesn’t"
    assert {"acme", "api", "v2"} <= f.entities
    assert "does" not in f.entities  # a sentence start is not a name
