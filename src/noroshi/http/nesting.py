"""How deeply a JSON body nests, checked before anything walks it.

msgspec decodes nesting as deep as the interpreter's recursion limit allows, and encoding the
same value again a few frames further down then fails: a body nested about 980 deep was a 500
with a traceback, whether it failed to decode or to go upstream. Bodies are held to
`MAX_DEPTH`, far below that limit and far above any real schema.

The check costs nothing for a body with at most `MAX_DEPTH` opening brackets, which cannot
nest deeper; for others, strings are cut out and the brackets left are summed, all in C.
"""

from __future__ import annotations

import itertools
import operator

__all__ = ["MAX_DEPTH", "deepest_field", "too_deep"]

MAX_DEPTH = 128  # serde_json's default

_NOT_STRUCTURE = bytes(b for b in range(256) if b not in b'[]{}"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = bytes.maketrans(b"[]{}", b"\x02\x00\x02\x00")  # 2 opens, 0 closes: depth = sum - count
_OPEN = frozenset(b"[{")


def _unescaped(body: bytes) -> bytes:
    """The body with `\\\\` and `\\"` taken out of its strings, so every `"` left is a string's
    start or end. Left to right, as JSON reads them: `\\\\"` is an escaped backslash, then `"`."""
    if body.find(b"\\") < 0:
        return body
    return body.replace(b"\\\\", b"").replace(b'\\"', b"")


def too_deep(body: bytes) -> bool:
    """Whether a valid JSON body nests arrays and objects more than `MAX_DEPTH` deep."""
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        return False
    outside = b"".join(_unescaped(body).translate(None, _NOT_STRUCTURE).split(b'"')[::2])
    steps = itertools.accumulate(outside.translate(_STEP))
    return max(map(operator.sub, steps, itertools.count(1)), default=0) > MAX_DEPTH


def deepest_field(body: bytes) -> str | None:
    """The top-level field whose value nests past `MAX_DEPTH`, for the error; None when the
    body is not an object, or not that deep. It reads the body, valid or not (msgspec may have
    given up on it), up to the first place past the limit."""
    depth, last, field = 0, b"", b""
    for i, part in enumerate(_unescaped(body).split(b'"')):
        if i % 2:  # inside a string: at depth 1, a key or a value of the body's object
            if depth == 1:
                last = part
            continue
        for byte in part.translate(None, _NOT_BRACKETS):
            if byte not in _OPEN:
                depth -= 1
                continue
            depth += 1
            if depth == 2:
                field = last  # the key just before a value that opens
            if depth > MAX_DEPTH:
                return field.decode("utf-8", "replace") if body.lstrip()[:1] == b"{" else None
    return None
