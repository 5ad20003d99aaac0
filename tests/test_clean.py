"""Corpus cleaning: deduplication keys, filters and the before/after report (property tests)."""

from hypothesis import given
from hypothesis import strategies as st

from mmlab.data.clean import clean, dedup_key, deduplicate


@given(st.lists(st.text(max_size=30), max_size=30))
def test_dedup_keeps_first_copies_in_order(docs):
    kept, removed = deduplicate(docs, normalise=False)
    assert kept == list(dict.fromkeys(docs)) and removed == len(docs) - len(kept)


@given(st.text(max_size=50))
def test_spacing_and_punctuation_do_not_change_the_key(text):
    assert dedup_key(text) == dedup_key("  " + text.replace(" ", "   ") + " !")


@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=50))
def test_case_does_not_change_the_key(text):
    assert dedup_key(text) == dedup_key(text.upper()) == dedup_key(text.lower())


def test_clean_report_accounts_for_every_document():
    story = "Once upon a time there was a cat. " * 10
    docs = [story, story, story.upper(), "short", "x" * 6000, story + " É" * 20, story + " the end"]
    kept, report = clean(docs)
    assert kept == [story, story + " the end"]
    rows = report.rows
    assert rows[0]["documents"] == 7 and rows[-1]["documents"] == 2
    assert sum(r["removed"] for r in rows) == 5
    assert [r["removed"] for r in rows[1:]] == [1, 1, 2, 1]
