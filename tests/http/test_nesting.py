"""The nesting check reads JSON as a parser would: brackets inside strings, escaped quotes and
escaped backslashes do not count, and the limit is exact."""

from __future__ import annotations

import json

import pytest

from noroshi.http.nesting import MAX_DEPTH, deepest_field, too_deep


def arrays(depth: int) -> str:
    return "[" * depth + "]" * depth


def around(template: str, depth: int) -> str:
    """`template` with `@` replaced by arrays `depth` deep."""
    return template.replace("@", arrays(depth))


@pytest.mark.parametrize(
    ("text", "deep"),
    [
        (arrays(MAX_DEPTH), False),
        (arrays(MAX_DEPTH + 1), True),
        (around('{"a": @}', MAX_DEPTH - 1), False),
        (around('{"a": @}', MAX_DEPTH), True),
        ("[" + ", ".join([arrays(3)] * 500) + "]", False),  # many brackets, shallow
        (json.dumps({"text": "[" * 500}), False),  # brackets in a string
        (json.dumps({"text": '\\"' + "[" * 500, "b": [[]]}), False),  # after an escaped quote
        (json.dumps(["\\", arrays(MAX_DEPTH)]), False),  # an escaped backslash ends a string
        (json.dumps(["\\", json.loads(arrays(MAX_DEPTH))]), True),
    ],
)
def test_depth_is_counted_outside_strings(text: str, deep: bool) -> None:
    assert too_deep(text.encode()) is deep


@pytest.mark.parametrize(
    ("text", "field"),
    [
        (around('{"model": "x", "tools": [{"p": @}], "z": 1}', 300), "tools"),
        (around('{"a": [[1]], "b": "[[[[", "c": {"d": @}}', 300), "c"),
        (around('{"a\\"b": @}', 300), "ab"),  # the escaped quote is left out of the name
        (arrays(300), None),  # not an object: no field to name
        ('{"a": ' + "[" * 5000, "a"),  # cut short, as msgspec may have given up on it
        ('{"a": [[]]}', None),
    ],
)
def test_the_field_past_the_limit_is_named(text: str, field: str | None) -> None:
    assert deepest_field(text.encode()) == field
