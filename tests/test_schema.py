"""The judgment schema and payload validation (annotation.schema)."""

import pytest
from pydantic import ValidationError

from annotation.schema import JudgmentSchema, PayloadError

FULL = JudgmentSchema.model_validate(
    {
        "pairwise": {"strengths": ["better", "much better"], "allow_tie": False, "justification": "required"},
        "rubric": {"aspects": [{"name": "helpfulness"}, {"name": "verbosity", "scale": {"min": 1, "max": 3}}]},
        "spans": {"categories": [{"name": "factual"}, {"name": "irrelevant"}]},
    }
)
TEXTS = ["The sky is green.", "The sky is blue."]


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        ({}, "at least one"),
        ({"pairwise": {}, "ranking": {"k": 3}}, "cannot be combined"),
        ({"ranking": {"k": 1}}, "greater than or equal to 2"),
        ({"rubric": {"aspects": []}}, "at least 1"),
        ({"rubric": {"aspects": [{"name": "Helpful ness"}]}}, "lowercase identifiers"),
        ({"rubric": {"aspects": [{"name": "a"}, {"name": "a"}]}}, "unique"),
        ({"rubric": {"aspects": [{"name": "a", "scale": {"min": 3, "max": 3}}]}}, "greater than min"),
        ({"spans": {"categories": [{"name": "x"}, {"name": "x"}]}}, "unique"),
        ({"pairwise": {"justification": "sometimes"}}, "justification"),
        ({"pairwise": {}, "colour": "red"}, "Extra inputs"),
    ],
)
def test_invalid_schemas_are_refused_with_a_reason(schema: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        JudgmentSchema.model_validate(schema)


def test_pairwise_options_run_from_a_much_better_through_tie_to_b_much_better() -> None:
    schema = JudgmentSchema.model_validate({"pairwise": {"strengths": ["better", "much better"]}})
    assert [label for _, _, label in schema.pairwise.options()] == [
        "A much better",
        "A better",
        "Tie",
        "B better",
        "B much better",
    ]


def test_a_complete_payload_validates() -> None:
    payload = FULL.validate_payload(
        {
            "pairwise": {"choice": "B", "strength": 2},
            "rubric": [{"helpfulness": 1, "verbosity": 2}, {"helpfulness": 5, "verbosity": 2}],
            "spans": [{"response": 0, "start": 11, "end": 16, "category": "factual"}],
            "justification": "A is wrong about the colour.",
        },
        TEXTS,
    )
    assert payload.pairwise.signed == 2
    assert TEXTS[0][payload.spans[0].start : payload.spans[0].end] == "green"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pairwise": {"choice": "tie", "strength": 0}}, "does not allow ties"),
        ({"pairwise": {"choice": "A", "strength": 3}}, "between 1 and 2"),
        ({"pairwise": {"choice": "C", "strength": 1}}, "pairwise.choice"),
        ({"justification": "  "}, "justification is required"),
        ({"rubric": [{"helpfulness": 6, "verbosity": 2}, {"helpfulness": 5, "verbosity": 2}]}, "between 1 and 5"),
        ({"rubric": [{"helpfulness": 3}, {"helpfulness": 5, "verbosity": 2}]}, "missing rubric aspect"),
        ({"rubric": [{"helpfulness": 3, "verbosity": 1, "tone": 2}] * 2}, "unknown rubric aspect"),
        ({"rubric": [{"helpfulness": 3, "verbosity": 1}]}, "expected 2"),
        ({"spans": [{"response": 0, "start": 5, "end": 99, "category": "factual"}]}, "not inside response 0"),
        ({"spans": [{"response": 2, "start": 0, "end": 1, "category": "factual"}]}, "refers to response 2"),
        ({"spans": [{"response": 0, "start": 3, "end": 3, "category": "factual"}]}, "not inside"),
        ({"spans": [{"response": 0, "start": 0, "end": 2, "category": "style"}]}, "unknown span category"),
        ({"ranking": [1, 2]}, "no ranking question"),
    ],
)
def test_payloads_that_do_not_fit_are_refused(change: dict, message: str) -> None:
    base = {
        "pairwise": {"choice": "A", "strength": 1},
        "rubric": [{"helpfulness": 3, "verbosity": 2}, {"helpfulness": 4, "verbosity": 2}],
        "justification": "because",
    }
    with pytest.raises(PayloadError, match=message):
        FULL.validate_payload({**base, **change}, TEXTS)


def test_rankings_are_dense_ranks_with_ties_only_where_allowed() -> None:
    strict = JudgmentSchema.model_validate({"ranking": {"k": 3}})
    loose = JudgmentSchema.model_validate({"ranking": {"k": 3, "allow_ties": True}})
    texts = ["x", "y", "z"]
    assert strict.validate_payload({"ranking": [2, 3, 1]}, texts).ranking == [2, 3, 1]
    with pytest.raises(PayloadError, match="does not allow ties"):
        strict.validate_payload({"ranking": [1, 1, 2]}, texts)
    assert loose.validate_payload({"ranking": [1, 1, 2]}, texts).ranking == [1, 1, 2]
    with pytest.raises(PayloadError, match="dense"):
        loose.validate_payload({"ranking": [1, 1, 3]}, texts)
    with pytest.raises(PayloadError, match="expected 3"):
        strict.validate_payload({"ranking": [1, 2]}, texts)


def test_item_response_counts_must_fit_the_schema() -> None:
    assert JudgmentSchema.model_validate({"pairwise": {}}).response_count_error(3) is not None
    assert JudgmentSchema.model_validate({"pairwise": {}}).response_count_error(2) is None
    assert "exactly 4" in JudgmentSchema.model_validate({"ranking": {"k": 4}}).response_count_error(3)
    assert JudgmentSchema.model_validate({"rubric": {"aspects": [{"name": "a"}]}}).response_count_error(1) is None
