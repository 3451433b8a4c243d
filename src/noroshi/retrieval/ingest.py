"""`noroshi ingest PATH --kb NAME`: a file or a folder into a knowledge base. Each file's
source is its path under PATH, so a re-run recognises it and skips it when its bytes have
not changed: an interrupted ingest resumes where it stopped."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from noroshi.errors import NoroshiError
from noroshi.retrieval.service import Knowledge
from noroshi.wire.knowledge import DocumentUpload, KnowledgeBaseCreate

__all__ = ["SUFFIXES", "Outcome", "files_under", "ingest"]

SUFFIXES = frozenset({".txt", ".text", ".md", ".markdown", ".html", ".htm", ".pdf"})


@dataclass
class Outcome:
    added: int = 0
    unchanged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source, why)


def files_under(path: Path) -> Iterator[tuple[Path, str]]:
    """Each document file with its source name, in a stable order; hidden entries skipped."""
    if path.is_file():
        yield path, path.name
        return
    for file in sorted(path.rglob("*")):
        relative = file.relative_to(path)
        if any(part.startswith(".") for part in relative.parts):
            continue
        if file.is_file() and file.suffix.lower() in SUFFIXES:
            yield file, relative.as_posix()


async def ingest(
    knowledge: Knowledge,
    kb: str,
    files: list[tuple[Path, str]],
    create_model: str | None = None,
    progress: Callable[[str], None] = lambda source: None,
) -> Outcome:
    """Add every file; `create_model` (or the default embedding model when it is "") makes
    the base when it does not exist, None refuses to."""
    if create_model is not None and await knowledge.store.get(kb) is None:
        await knowledge.create(KnowledgeBaseCreate(name=kb, embedding_model=create_model or None))
    await knowledge.base(kb)  # a missing base fails here, once, not per file
    outcome = Outcome()
    for file, source in files:
        try:
            data = await asyncio.to_thread(file.read_bytes)
            _, changed = await knowledge.add(kb, DocumentUpload(source=source, data=data))
        except (NoroshiError, OSError) as exc:
            outcome.failed.append((source, getattr(exc, "message", None) or str(exc)))
        else:
            if changed:
                outcome.added += 1
            else:
                outcome.unchanged += 1
        progress(source)
    return outcome
