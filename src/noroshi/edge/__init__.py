"""The edge role: authenticates clients and relays their requests to core nodes, signed.

`Signer` runs at the edge; `Verifier` at each core, with `MemoryNonces` for a single core or
`RedisNonces` for cores that share Redis.
"""

from noroshi.edge.signing import (
    HEADER_CALLER,
    HEADER_KEY_ID,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    MemoryNonces,
    NonceStore,
    RedisNonces,
    Signer,
    Verifier,
    key_id,
)

__all__ = [
    "HEADER_CALLER",
    "HEADER_KEY_ID",
    "HEADER_NONCE",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "MemoryNonces",
    "NonceStore",
    "RedisNonces",
    "Signer",
    "Verifier",
    "key_id",
]
