"""Admission: an image request is accepted only when the encoder work ahead of it fits a latency bound; the
rest are refused at once, before their image is decoded, with a retryable error that says when to retry.

Where a request can wait, and what bounds it:
- the gateway: at most `--max-concurrency` requests inside; the next is 503 with `Retry-After` at once;
- Triton's HTTP and gRPC frontends hand requests straight to the ensemble: no queue of their own;
- the preprocessing model's queue: decoding takes milliseconds, and a refused request costs only its image
  header; bounded by count (budgets.PREPROCESS_MAX_QUEUE, at least the gateway's batch window): one more is
  refused at once;
- the encoder's queue and batch: the wait that matters. An image waits for every encoder call admitted before
  it, and one `execute()` answers its whole batch together, so a request the encoder's queue accepted could
  wait for a 30 s batch and then be refused by a 2 s queue timeout it had long passed (issue 25's record).
  Admission bounds that wait where it starts: in the preprocessing model, before the decode.

The ledger: a folder shared by one Triton server's model processes (the Python backend's stubs are its
children: the folder is named by their parent's pid), on this host only. For each admitted image request,
preprocessing writes a ticket, a file whose name holds its expiry and its cost; the encoder deletes it once
it has answered. The encoder measures its seconds per unit of cost (`Meter`) and writes them beside the
tickets. Work ahead = the live tickets' costs x the slowest encoder's measured rate (on a CPU host every
served precision shares the same cores). A ticket whose request never reached the encoder (refused by a
queue bound, a crashed process) expires on its own, so the ledger heals without a restart.

Cost of an image with t visual tokens: t x (1 + t / 768): the vision tower's linear layers and the language
tower grow with t, its attention with t squared, and on the exported checkpoints attention is about half of
an image's time at the published 768-token cap. Queries are not ticketed: they cost milliseconds to a
second, and their wait is bounded by the same admitted image work plus Triton's queue bound.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COST_TOKENS = 768  # where attention's cost equals the linear part's (README "Overload")
# Admission holds the work ahead to this share of the bound; the rest is for what the estimate misses: the image
# answered with the one after it (the encoder's waves of 2 on a CPU), and the rate's drift on a shared host (fixed
# 448 int8 at 64 in flight, this CPU: admitted-to-answered p99 1.07 to 1.25x the estimated work ahead, run to run).
HEADROOM = 0.8
RATE_WINDOW = 16  # the rate published is over the last calls together: their seconds over their costs
MIN_MEASURED = 100.0  # calls of less image work (warmup, canaries, queries) say more of overhead than of rate
RATE_PREFIX = "rate-"
LOCK = ".lock"
LINE = ".line"  # until when the refused requests' places in line are handed out (epoch seconds)
PLACE_PREFIX = "place-"  # a held place: place-<due ms>-<expiry ms>-<cost>-<token>
# A held place waits this long past the latest its holder should come back (the SDK retries at the hint to a
# quarter later) before it lapses and stops holding room for it.
PLACE_GRACE_S = 5.0


def image_cost(tokens: int) -> float:
    """Encoder work of an image with `tokens` visual tokens, in units of one token's linear cost."""
    return tokens * (1.0 + tokens / COST_TOKENS)


def images_cost(grids: np.ndarray | None) -> float:
    """Encoder work of one request's images (grids [n, 2] of visual tokens); a query's (None) counts 0."""
    if grids is None:
        return 0.0
    return float(sum(image_cost(int(r) * int(c)) for r, c in np.asarray(grids).reshape(-1, 2)))


class Refused(Exception):
    """The server is busy: this request is refused before any work, and may be retried after `retry_after`,
    with `place` (a token held for it, or "") as the retry's PLACE_PARAMETER."""

    def __init__(self, message: str, retry_after: int, place: str = "") -> None:
        super().__init__(message)
        self.retry_after, self.place = retry_after, place


@dataclass(frozen=True)
class Place:
    """Room held for a refused request whose client said it will come back with the token: from `due` (when its
    hint says to retry) until `expiry` (epoch seconds), `cost` units of encoder work."""

    due: float
    expiry: float
    cost: float
    token: str
    name: str

    @classmethod
    def parse(cls, name: str) -> Place | None:
        parts = name.removeprefix(PLACE_PREFIX).split("-")
        if not name.startswith(PLACE_PREFIX) or len(parts) != 4 or not (parts[0].isdigit() and parts[1].isdigit()):
            return None
        try:
            return cls(int(parts[0]) / 1000, int(parts[1]) / 1000, float(parts[2]), parts[3], name)
        except ValueError:
            return None


@dataclass(frozen=True)
class Policy:
    """What preprocessing admits.

    max_wait_s: the most encoder work (seconds, at the measured rate) a new request may find ahead of it; an
        accepted request then waits at most that plus its own time. 0 turns admission off.
    min_in_flight: requests always admitted while fewer than this many are in flight (a user's batch of 4),
        however slow the host: the bound then is their own time.
    default_rate: seconds per unit of cost until the encoder has measured its own.
    always_tokens: requests whose images are all this small pass regardless (the health canary's image).
    """

    max_wait_s: float
    min_in_flight: int = 4
    default_rate: float = 0.001
    always_tokens: int = 8  # the health canary (56 x 40 pixels) is 2 x 3 visual tokens

    @property
    def enabled(self) -> bool:
        return self.max_wait_s > 0


FOLDER_PREFIX = "colqwen2-admission-"


def ledger_folder(server_pid: int | None = None) -> Path:
    """The ledger of the Triton server this process serves in (its parent), in memory where /dev/shm exists."""
    root = (
        Path("/dev/shm")
        if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK)
        else Path(tempfile.gettempdir())
    )
    return root / f"{FOLDER_PREFIX}{server_pid or os.getppid()}"


def sweep_ledgers(root: Path) -> list[Path]:
    """Remove the ledgers of servers that no longer run (a folder per server pid, never removed by the server
    itself: its stubs are killed, not asked); returns what was removed."""
    removed = []
    for folder in root.glob(f"{FOLDER_PREFIX}*"):
        pid = folder.name.removeprefix(FOLDER_PREFIX)
        if not pid.isdigit() or _alive(int(pid)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


class Ledger:
    """Tickets of admitted requests and the encoders' measured rates, in one folder (see the module docstring)."""

    def __init__(self, folder: Path, clock: Callable[[], float] = time.time) -> None:
        self.folder, self.clock = Path(folder), clock
        self.folder.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def _locked(self):
        with open(self.folder / LOCK, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def tickets(self) -> list[float]:
        """Costs of the live tickets; expired ones are removed."""
        now, costs = self.clock(), []
        for entry in os.scandir(self.folder):
            parts = entry.name.split("-")
            if len(parts) != 3 or not parts[0].isdigit():
                continue
            if int(parts[0]) / 1000 < now:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                continue
            costs.append(float(parts[1]))
        return costs

    def rate(self, default: float) -> float:
        """Seconds per unit of cost: the slowest encoder's measured rate, or `default` before any."""
        rates = []
        for path in self.folder.glob(f"{RATE_PREFIX}*"):
            with contextlib.suppress(OSError, ValueError):
                rates.append(float(path.read_text()))
        return max(rates, default=default)

    def places(self) -> list[Place]:
        """The places held; lapsed ones are removed."""
        now, held = self.clock(), []
        for entry in os.scandir(self.folder):
            place = Place.parse(entry.name)
            if place is None:
                continue
            if place.expiry < now:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                continue
            held.append(place)
        return held

    def admit(
        self, cost: float, policy: Policy, small: bool = False, place: str | None = None, hold: bool = True
    ) -> str:
        """A ticket for a request of `cost`, or `Refused` naming the work ahead and when to retry. `place`: None
        from a client that does not come back with places, "" from one that does (its refusal then holds room for
        it), else the token of the place it was given, which it claims. `hold` False: a client's last try, which
        claims its place but would not come back for a new one."""
        with self._locked():
            costs = self.tickets()
            rate = self.rate(policy.default_rate)
            held = self.places()
            mine = next((p for p in held if place and p.token == place), None)
            if mine is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.folder / mine.name)
            # the places handed out hold their room against newcomers, due or not: the line is scheduled to fill
            # the room as the encoder frees it, and a newcomer taking it before a place fell due left the holder
            # refused again at its hint (1,567 refusals and 2 requests given up after 50 in a level of 64 in flight,
            # native fp32, where 154 sufficed at 16). So whoever sends first, typically a client just answered
            # sending its next, joins the line's end. Not against each other: holders come back up to a quarter of
            # their hint late, out of order, and one made to wait for an earlier holder still on its way was
            # refused again and again (1,725 refusals).
            reserved = [] if mine is not None else held
            # the work ahead, not this request's own: a photo is refused exactly when a chart would be (pricing
            # its own cost in would let small images through where large ones starve)
            ahead = (sum(costs) + sum(p.cost for p in reserved)) * rate
            limit = HEADROOM * policy.max_wait_s
            if not small and len(costs) >= policy.min_in_flight and ahead > limit:
                asks = place if hold else None
                retry, token, due = self._place_in_line(ahead - limit, cost, rate, asks, front=mine is not None)
                n = len(reserved)
                held_for = f", {n} place{'s' if n > 1 else ''} in line held" if n else ""
                raise Refused(
                    f"busy: {ahead:.1f} s of encoder work ahead of this image ({len(costs)} image requests in "
                    f"flight{held_for}), over the {limit:g} s the {policy.max_wait_s:g} s bound admits; retry in "
                    f"{retry} s" + (f" with place {token} due in {due:.2f} s" if token else ""),
                    retry,
                    token,
                )
            # expires long after the slowest admitted request should have been answered
            expiry = self.clock() + 3 * (max(ahead, policy.max_wait_s) + cost * rate) + 60
            name = f"{int(expiry * 1000)}-{cost:.0f}-{uuid.uuid4().hex}"
            (self.folder / name).touch()
            return name

    def _place_in_line(
        self, over_s: float, cost: float, rate: float, place: str | None, front: bool
    ) -> tuple[int, str, float]:
        """Seconds until a refused request should retry (whole, at least 1), the token of the place held for it
        ("" where its client does not come back with one) and when that place falls due (seconds, not rounded: a
        holder told whole seconds came back up to one late, and the room held for it idled), under the lock: when
        the work ahead has drained to what the bound admits (`over_s` from now), after the places handed to the
        requests refused before it, each of which holds its own encoder time. Retries then come back about as fast
        as the encoder frees room, in the order they were refused, where a fixed hint brought every refused client
        back together (issue 25: 2.6 refusals per served image at 64 in flight). A client that comes back with its
        token finds its room held (`admit`); one refused again while claiming its place (`front`) keeps its rank:
        it is told only when the work now ahead of it will have drained. A place nobody claims lapses
        PLACE_GRACE_S after the latest its holder should have come back."""
        now = self.clock()
        line = self.folder / LINE
        try:
            taken = float(line.read_text())
        except (OSError, ValueError):
            taken = 0.0
        start = now + over_s if front else max(now + over_s, taken)
        if not front:
            line.write_text(repr(start + cost * rate))
        # at least a second: a place due at once sent its holder back before anything had drained, to be refused
        # again at once, its retries spent in a second (a bound of milliseconds, tests/test_overload.py)
        due = max(1.0, start - now)
        retry = math.ceil(due)
        if place is None:
            return retry, "", due
        token = uuid.uuid4().hex[:16]
        expiry = now + 1.25 * retry + PLACE_GRACE_S
        (self.folder / f"{PLACE_PREFIX}{int((now + due) * 1000)}-{int(expiry * 1000)}-{cost:.0f}-{token}").touch()
        return retry, token, due

    def release(self, tickets: Iterable[str]) -> None:
        for name in tickets:
            if name and "/" not in name and not name.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.folder / name)

    def write_rate(self, encoder: str, rate: float) -> None:
        """Atomically: a reader never sees half a number."""
        staging = self.folder / f".{RATE_PREFIX}{encoder}.{os.getpid()}"
        staging.write_text(repr(rate))
        os.replace(staging, self.folder / f"{RATE_PREFIX}{encoder}")


class Meter:
    """The encoder's side: measures seconds per unit of cost over its last RATE_WINDOW waves (their seconds over
    their costs: a chart costs more per unit than a photo, its fixed part weighing more, and a workload's mix
    averages out; the slowest wave's rate instead would hold the encoder's queue to a fraction of the bound, and
    leave it idle while refused clients wait to retry), and releases answered tickets.

    A wave's seconds run from the previous wave's end where admitted work was still waiting then, else from its own
    start: what admission needs is how fast admitted work drains, and the time between waves (answering, Triton
    batching the next requests, the other processes on the host's cores) is part of it. The graphs' time alone was
    0.7 to 0.75 of it on this CPU (fixed 448 int8 at 64 in flight: 3.0 images/s served, 240 to 260 ms of graph time
    an image), and admitted work held to 10 s of graph time took 13.7 s (p99)."""

    def __init__(self, ledger: Ledger, encoder: str) -> None:
        self.ledger, self.encoder = ledger, encoder
        self.recent: collections.deque[tuple[float, float]] = collections.deque(maxlen=RATE_WINDOW)
        self.last_end: float | None = None  # the previous wave's end, while admitted work was waiting then

    @property
    def rate(self) -> float | None:
        if not self.recent:
            return None
        return sum(s for s, _ in self.recent) / sum(c for _, c in self.recent)

    def done(self, start: float, end: float, costs: Sequence[float], tickets: Iterable[str]) -> None:
        """After a wave that ran from `start` to `end` (one monotonic clock, seconds) over requests of `costs`
        (images' costs; queries count 0)."""
        self.ledger.release(tickets)
        begun = start if self.last_end is None else min(start, self.last_end)
        self.last_end = end if self.ledger.tickets() else None
        total, seconds = sum(costs), end - begun
        if total < MIN_MEASURED or seconds <= 0:
            return
        self.recent.append((seconds, total))
        with contextlib.suppress(OSError):
            self.ledger.write_rate(self.encoder, self.rate)
