"""The headers every page a browser renders carries (`/`, `/docs`, and `/openapi.json`, which a
browser may open): no MIME sniffing, no referrer, no framing by another site, and a content
security policy that starts from nothing. One definition, so no page drifts from the others.
"""

from __future__ import annotations

import base64
import hashlib
import re

from noroshi.types import Headers

__all__ = ["inline_sources", "security_headers"]

# what every policy refuses; a page names the sources it needs on top of this
BASE_POLICY = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


def security_headers(*directives: str) -> Headers:
    """The security headers, the policy allowing `directives` (e.g. "script-src 'self'")."""
    return [
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),  # for browsers that predate frame-ancestors
        ("referrer-policy", "no-referrer"),
        ("content-security-policy", "; ".join((BASE_POLICY, *directives))),
    ]


def inline_sources(page: bytes, tag: str) -> str:
    """The hashes of a page's inline `<tag>` blocks, as CSP sources: they run, nothing else."""
    blocks = re.findall(rb"<%s>(.*?)</%s>" % (tag.encode(), tag.encode()), page, re.DOTALL)
    hashes = (base64.b64encode(hashlib.sha256(block).digest()).decode() for block in blocks)
    return " ".join(f"'sha256-{h}'" for h in hashes)
