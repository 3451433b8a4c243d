"""Request ids: the client's when sane, else new ones that never repeat, across forked workers
too."""

from __future__ import annotations

import os

from noroshi.http.request import MAX_REQUEST_ID, request_id


def test_a_sane_client_id_is_kept_and_others_replaced() -> None:
    assert request_id("abc-123") == "abc-123"
    for bad in (None, "", "x" * (MAX_REQUEST_ID + 1), "line\nbreak"):
        new = request_id(bad)
        assert new != bad and len(new) >= 16 and new.isprintable()


def test_new_ids_do_not_repeat() -> None:
    ids = {request_id(None) for _ in range(10_000)}
    assert len(ids) == 10_000


def test_a_forked_worker_makes_ids_of_its_own() -> None:
    parent = [request_id(None) for _ in range(3)]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what a worker forked from the server process would make
        try:
            os.write(write, " ".join(request_id(None) for _ in range(3)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        child = f.read().split()
    os.waitpid(pid, 0)
    assert len(child) == 3
    # a new random prefix: not the parent's ids continued, nor the parent's next ones
    assert not set(child) & {*parent, *(request_id(None) for _ in range(3))}
    assert child[0][:16] != parent[0][:16]
