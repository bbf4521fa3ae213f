"""The plain-text pieces of the chat page: timing line, source titles, sizes."""

from __future__ import annotations

from app.ui_format import cache_similarity, duration, size, source_title, timing_line
from chains import Source, Timings


def test_timing_line_names_each_stage_that_ran() -> None:
    timings = Timings(retrieval_s=0.013, ttft_s=0.25, generation_s=2.0, total_s=2.4)
    line = timing_line(timings, answer="x" * 400)  # about 100 tokens at the chains' 4 characters per token
    assert line == "retrieval 13 ms · first token 250 ms · ≈50 tokens/s · total 2.4 s"


def test_timing_line_of_a_cache_hit_leaves_out_what_did_not_run() -> None:
    assert timing_line(Timings(ttft_s=0.015, total_s=0.016)) == "first token 15 ms · total 16 ms"


def test_timing_line_without_any_text_has_only_the_total() -> None:
    assert timing_line(Timings(total_s=0.5), answer="") == "total 500 ms"


def test_cache_similarity_is_read_from_the_agents_notice() -> None:
    notices = ("question truncated", "answered from the semantic cache (similarity 0.932)")
    assert cache_similarity(notices) == 0.932
    assert cache_similarity(("stopped by the user",)) is None


def test_source_title_has_place_and_score() -> None:
    source = Source(2, "guide.pdf", "Guide", 3, "Setup", 0, 0.8123, "text", "node")
    assert source_title(source) == "[2] guide.pdf, p. 3, § Setup · score 0.81"


def test_duration_and_size_switch_units() -> None:
    assert [duration(0.0004), duration(0.999), duration(12.34)] == ["0 ms", "999 ms", "12.3 s"]
    assert [size(812), size(14_540), size(3_250_000)] == ["812 B", "14.2 KB", "3.1 MB"]
