"""What noroshi creates for its own state is private to the user it runs as: keys' hashes,
sessions and usage are nobody else's to read on a shared machine.

A directory it creates is 0700 and a database file 0600; SQLite gives the `-wal` and `-shm`
files it makes the mode of their database, so they follow. No umask is set: the umask is the
whole process's, and other threads may create files meanwhile. What exists already keeps its
mode: a directory the user made, or a file they opened up to a group, was their choice.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["private_dir", "private_file"]


def private_dir(path: Path) -> Path:
    """`path`, created 0700 unless it exists; missing parents get the usual mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        if not path.is_dir():
            raise
    return path


def private_file(path: Path) -> Path:
    """`path`, created empty and 0600 unless it exists (an empty file is an empty SQLite
    database), in a directory made by `private_dir`."""
    private_dir(path.parent)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    return path
