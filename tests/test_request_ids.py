"""Generated request ids are unguessable and unique, also across forked workers.

Feedback is joined to outcomes by request id, so an id a client could predict from the ids it
has seen would let it write feedback onto other callers' requests.
"""

from __future__ import annotations

import os
import random
import re

from gateway.serving.request_ids import FreshIds


def test_ids_are_128_bit_hex_and_unique():
    fresh = FreshIds()
    ids = [fresh() for _ in range(20_000)]  # crosses many buffer refills
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_ids_do_not_follow_pythons_random_module():
    """Seeding `random` the same way twice must not repeat the ids (they were
    `random.getrandbits(128)`, a Mersenne Twister that 624 outputs reveal)."""
    random.seed(1234)
    first = [FreshIds()() for _ in range(3)]
    random.seed(1234)
    second = [FreshIds()() for _ in range(3)]
    assert set(first).isdisjoint(second)


def test_a_forked_child_does_not_reuse_the_parents_buffer():
    fresh = FreshIds()
    fresh()  # the parent has a filled buffer now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: what would a forked worker hand out next?
        os.close(read)
        os.write(write, "".join(fresh() for _ in range(4)).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 4096).decode()
    os.close(read)
    os.waitpid(pid, 0)
    parent = "".join(fresh() for _ in range(4))
    assert len(child) == 128 and child != parent
