"""Which cases one process predicts (``part=I/N``) and reading cases ahead (``workers=K``).

The share rule is nnU-Net's ``-part_id/-num_parts`` (written 1-based here): the cases
are sorted by case id (code-point order, the same on every machine and locale) and the
k-th of them (counting from 0) goes to part ``k mod N + 1``. It depends on the names in
the input folder alone, so N processes started independently (a shell loop, a SLURM
array, one job per GPU) agree without talking to each other, and together predict every
case exactly once. Interleaving rather than contiguous blocks because case names often
sort by site or date, which goes with size: every part then gets a mix.

Reading ahead: with ``workers=K`` a pool of K threads reads and preprocesses the next K
cases while the current one is inferred. Threads, not processes: the network's forward
pass releases the GIL, so reading overlaps it without pickling volumes between
processes. Results are handed over in case order, so outputs and messages are the same
as with ``workers=0`` (each case read when its turn comes).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Protocol, TypeVar

from segkit.errors import ConfigError

T = TypeVar("T")
R = TypeVar("R")

_END = object()
_PART = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


class _HasCaseId(Protocol):
    case_id: str


C = TypeVar("C", bound=_HasCaseId)


def parse_part(text: str) -> tuple[int, int]:
    """``"I/N"`` → ``(I, N)`` with ``1 <= I <= N``.

    Raises:
        ConfigError: not two whole numbers ``I/N``, ``N < 1`` or ``I`` outside ``1..N``.
    """
    m = _PART.match(str(text))
    if m is None:
        raise ConfigError(
            f"part={text}: expected I/N, two whole numbers with 1 <= I <= N (the I-th of N "
            "shares of the cases). Fix: e.g. part=1/2 and part=2/2 in two processes; "
            "part=1/1 (the default) predicts every case."
        )
    i, n = int(m[1]), int(m[2])
    if n < 1:
        raise ConfigError(f"part={text}: N must be at least 1. Fix: part=1/1 for every case.")
    if not 1 <= i <= n:
        raise ConfigError(
            f"part={text}: I={i} is outside 1..{n}; I counts from 1 (part=1/{n} .. "
            f"part={n}/{n}). Fix: part={min(max(i, 1), n)}/{n}; from a 0-based SLURM array "
            f"task id: part=$((SLURM_ARRAY_TASK_ID+1))/{n}."
        )
    return i, n


def select_part(cases: Sequence[C], part: tuple[int, int]) -> list[C]:
    """Part ``I`` of ``N`` of ``cases``: sorted by case id, every N-th from the I-th."""
    i, n = part
    return sorted(cases, key=lambda c: c.case_id)[i - 1 :: n]


def describe_part(part: tuple[int, int], chosen: Sequence[_HasCaseId], total: int) -> str:
    """``part 1/2: 2 of 3 case(s) (a, c)`` — the share and the cases it took."""
    ids = ", ".join(c.case_id for c in chosen) or "none"
    return f"part {part[0]}/{part[1]}: {len(chosen)} of {total} case(s) ({ids})"


def check_workers(workers: int) -> None:
    """Raises ConfigError unless ``workers`` is a whole number >= 0."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ConfigError(
            f"workers: got {workers!r}; expected a whole number >= 0 (0: each case is read "
            "when its turn comes; K: K threads read the next K cases ahead). Fix: workers=0 "
            "or workers=2."
        )


def read_ahead(
    items: Sequence[T], load: Callable[[T], R], *, workers: int
) -> Iterator[tuple[T, Callable[[], R]]]:
    """Yields ``(item, get)`` in order; ``get()`` returns ``load(item)`` or raises what it raised.

    With ``workers=0`` ``get`` calls ``load`` then and there. With ``workers=K`` up to K
    loads run ahead in threads, so at most K loaded items wait besides the one in use.
    Closing the iterator (``contextlib.closing``) cancels loads not yet started and waits
    for those running.
    """
    if workers <= 0:
        for item in items:
            yield item, partial(load, item)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="segkit-read")
    pending: deque[tuple[T, Future[R]]] = deque()
    todo = iter(items)
    try:
        while True:
            # before item i is handed over, items i .. i+K are submitted: while i is in
            # use, K threads read i+1 .. i+K
            while len(pending) <= workers and (nxt := next(todo, _END)) is not _END:
                pending.append((nxt, pool.submit(load, nxt)))
            if not pending:
                return
            item, future = pending.popleft()
            yield item, future.result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
