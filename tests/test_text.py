"""One-line texts and quoted values."""

from __future__ import annotations

from webhook.text import one_line, quoted


def test_one_line_folds_whitespace() -> None:
    assert one_line("a\n  b\tc ") == "a b c"


def test_a_short_value_is_quoted_whole() -> None:
    assert quoted("nginx:1.25") == "nginx:1.25"
    assert quoted("x" * 100) == "x" * 100


def test_a_long_value_is_quoted_by_its_start_and_size() -> None:
    value = "é" * 150
    assert quoted(value) == "é" * 100 + "… (300 bytes)"
