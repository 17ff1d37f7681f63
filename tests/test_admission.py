"""Admission (model_repository/colqwen2_serving/admission.py): the ledger's arithmetic, its expiry, its lock
across processes, and the preprocessing model refusing before it decodes. The served path is in test_overload."""

from __future__ import annotations

import io
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model_repository.colqwen2_serving.admission import (
    MIN_MEASURED,
    RATE_WINDOW,
    Ledger,
    Meter,
    Policy,
    Refused,
    image_cost,
    images_cost,
    ledger_folder,
    sweep_ledgers,
)
from model_repository.colqwen2_serving.errors import InputError
from model_repository.colqwen2_serving.grid import PixelLimits
from model_repository.colqwen2_serving.imaging import DecodeLimits, Resolution
from model_repository.colqwen2_serving.preprocess import Preprocessor
from model_repository.colqwen2_serving.prompts import PromptTokenizer


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_an_images_cost_doubles_its_linear_part_at_the_cap():
    assert image_cost(768) == 2 * 768
    assert image_cost(4) == pytest.approx(4.02, abs=0.01)
    assert images_cost(np.array([[24, 32], [2, 2]])) == image_cost(768) + image_cost(4)
    assert images_cost(None) == 0.0  # a query


def test_the_bound_refuses_past_the_floor_and_says_when_to_retry(tmp_path):
    ledger = Ledger(tmp_path, Clock())
    policy = Policy(max_wait_s=3.0, min_in_flight=2, default_rate=0.001)
    photo = image_cost(768)  # 1.536 s at the default rate
    first, second = ledger.admit(photo, policy), ledger.admit(photo, policy)  # the floor: 2 always pass
    assert len(ledger.tickets()) == 2
    with pytest.raises(Refused, match=r"^busy: 3\.1 s of encoder work ahead of this image \(2 image requests in "
                       r"flight\), over the 2\.4 s the 3 s bound admits; retry in 1 s") as refused:  # fmt: skip
        ledger.admit(photo, policy)
    assert refused.value.retry_after == 1  # it fits once 0.67 s have drained: at least 1 s
    ledger.admit(image_cost(4), policy, small=True)  # a canary-sized image passes anyway
    ledger.release([first, second])
    assert ledger.admit(photo, policy)  # room again
    assert sorted(ledger.tickets()) == [4.0, photo]  # costs kept to the unit


def test_refused_requests_are_given_places_in_line(tmp_path):
    clock = Clock()
    ledger = Ledger(tmp_path, clock)
    policy = Policy(max_wait_s=25.0, min_in_flight=0, default_rate=0.01)
    ledger.admit(2100.0, policy)  # 21 s ahead of the next: 1 s over the 20 s the bound admits (HEADROOM)
    hints = []
    for _ in range(3):  # 2 s of encoder work each: each waits for the one refused before it
        with pytest.raises(Refused) as refused:
            ledger.admit(200.0, policy)
        hints.append(refused.value.retry_after)
    assert hints == [1, 3, 5]
    clock.now += 10  # the places handed out are past: the next waits only for the work over the bound
    with pytest.raises(Refused, match="retry in 1 s"):
        ledger.admit(200.0, policy)


def test_a_place_is_held_for_the_client_that_comes_back_for_it(tmp_path):
    """A refused request whose client said it comes back ("") is given a token, and its room is held: a newcomer
    (typically a client just answered, sending its next) joins the line's end while places are held; holders see
    only the tickets, whatever order they come back in; a last try claims without asking for a new place."""
    clock = Clock()
    ledger = Ledger(tmp_path, clock)
    policy = Policy(max_wait_s=25.0, min_in_flight=0, default_rate=0.01)
    first = ledger.admit(2100.0, policy)  # 21 s ahead of the next: 1 s over the 20 s the bound admits
    with pytest.raises(Refused, match=r"retry in 1 s with place [0-9a-f]{16} due in 1\.00 s$") as early:
        ledger.admit(200.0, policy, place="")
    with pytest.raises(Refused, match=r", 1 place in line held\).*retry in 3 s$") as other:  # None: never comes back
        ledger.admit(200.0, policy, place=None)
    assert early.value.place and other.value.place == "" and len(ledger.places()) == 1
    with pytest.raises(Refused) as late:
        ledger.admit(200.0, policy, place="")
    assert late.value.retry_after == 5 and len(ledger.places()) == 2
    ledger.release([first])  # the encoder answered: 0 s of tickets, 4 s of places
    ledger.admit(1700.0, policy)  # a newcomer still fits: 4 s ahead of it
    with pytest.raises(
        Refused, match=r"21\.0 s of encoder work .* \(1 image requests in flight, 2 places in line held\)"
    ):
        ledger.admit(100.0, policy, place="")  # 17 s of tickets + 4 s held: the room is the places'
    clock.now += 5
    ledger.admit(200.0, policy, place=late.value.place)  # the later holder first: it sees the tickets only (17 s)
    busy = ledger.admit(200.0, policy, place=early.value.place)  # then the earlier one (19 s)
    assert len(ledger.places()) == 1  # the newcomer refused above holds one
    with pytest.raises(Refused) as again:  # a holder finding more than the bound ahead of it: refused again, told
        ledger.admit(100.0, policy, place=ledger.places()[0].token)  # when the tickets drain, not after the line
    assert again.value.retry_after == 1 and again.value.place  # 21 s of tickets: 1 s over
    claim = again.value.place
    with pytest.raises(Refused) as last:  # its last try: claims the place, asks for none if refused
        ledger.admit(100.0, policy, place=claim, hold=False)
    assert last.value.place == "" and claim not in {p.token for p in ledger.places()}
    ledger.release([busy])
    clock.now += 1.25 * 60 + 5 + 1  # nobody came back: the places lapse and hold nothing
    assert ledger.places() == [] and ledger.admit(100.0, policy)


def test_a_ticket_never_released_expires(tmp_path):
    clock = Clock()
    ledger = Ledger(tmp_path, clock)
    policy = Policy(max_wait_s=1.0, min_in_flight=0, default_rate=0.001)
    ledger.admit(1500.0, policy)  # its request died before the encoder: nobody releases it
    with pytest.raises(Refused):
        ledger.admit(600.0, policy)
    clock.now += 3 * (1.0 + 1.5) + 61  # past 3 x (the bound + its own time) + 60 s
    assert ledger.tickets() == [] and not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert ledger.admit(600.0, policy)


def test_the_encoder_measures_its_rate_and_the_slowest_counts(tmp_path):
    ledger = Ledger(tmp_path, Clock())
    policy = Policy(max_wait_s=10.0, default_rate=0.5)
    assert ledger.rate(policy.default_rate) == 0.5  # nothing measured yet
    fp32, int8 = Meter(ledger, "colqwen2_encoder_fp32"), Meter(ledger, "colqwen2_encoder_int8_dynamic")
    ticket = ledger.admit(1000.0, policy)
    fp32.done(100.0, 101.0, [1000.0], [ticket])  # nothing else was waiting: the wave's own second
    assert ledger.tickets() == [] and ledger.rate(0.5) == pytest.approx(0.001)
    fp32.done(200.0, 202.0, [1000.0], [])  # the last RATE_WINDOW waves together: 3 s over 2000 units
    assert fp32.rate == pytest.approx(0.0015)
    int8.done(300.0, 300.5, [1000.0], [])
    assert ledger.rate(0.5) == pytest.approx(0.0015)  # the slowest encoder: they share the host's cores
    fp32.done(400.0, 405.0, [MIN_MEASURED - 1], [])  # a warmup-sized call says more of overhead than of rate
    assert fp32.rate == pytest.approx(0.0015)
    for k in range(RATE_WINDOW):
        fp32.done(500.0 + 2 * k, 501.2 + 2 * k, [1000.0], [])
    assert fp32.rate == pytest.approx(0.0012) and ledger.rate(0.5) == pytest.approx(0.0012)


def test_while_work_waits_the_time_between_waves_counts(tmp_path):
    ledger = Ledger(tmp_path, Clock())
    policy = Policy(max_wait_s=100.0, default_rate=0.001)
    meter = Meter(ledger, "colqwen2_encoder_fp32")
    first, second = ledger.admit(1000.0, policy), ledger.admit(1000.0, policy)
    meter.done(10.0, 11.0, [1000.0], [first])  # the second still waits: the time until the next wave is drain time
    meter.done(11.5, 12.5, [1000.0], [second])  # 0.5 s answering and batching, then 1 s of graphs
    assert meter.rate == pytest.approx((1.0 + 1.5) / 2000)
    ledger.admit(1000.0, policy)
    meter.done(20.0, 21.0, [1000.0], [])  # idle before it (nothing was waiting at 12.5): its own second
    assert meter.rate == pytest.approx((1.0 + 1.5 + 1.0) / 3000)


def _admit_many(folder: str, count: int, results) -> None:
    ledger = Ledger(Path(folder))
    policy = Policy(max_wait_s=1.0, min_in_flight=0, default_rate=0.01)
    admitted = 0
    for _ in range(count):
        try:
            ledger.admit(10.0, policy)  # 0.1 s each: admitted while at most 0.8 s is ahead (HEADROOM), 9 in all
            admitted += 1
        except Refused:
            pass
    results.put(admitted)


def test_processes_admitting_at_once_never_pass_the_bound_together(tmp_path):
    results = multiprocessing.get_context("spawn").Queue()
    workers = [multiprocessing.get_context("spawn").Process(target=_admit_many, args=(str(tmp_path), 30, results))
               for _ in range(3)]  # fmt: skip
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert sum(results.get(timeout=5) for _ in workers) == 9


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def preprocessor(tiny_artifacts, tmp_path) -> Preprocessor:
    tokenizer = PromptTokenizer.from_processor_dir(tiny_artifacts / "processor")
    resolution = Resolution(PixelLimits(3136, 602112))
    policy = Policy(max_wait_s=1.0, min_in_flight=1, default_rate=0.001)
    return Preprocessor(resolution, DecodeLimits(), tokenizer, policy, Ledger(tmp_path / "ledger", Clock()))


def test_preprocessing_refuses_before_decoding_and_hands_its_ticket_on(preprocessor):
    photo = np.array([[_png(1500, 1500)]], dtype=object)
    outputs = preprocessor(photo, None)
    (ticket,) = {t.decode() for t in outputs["TICKET"].reshape(-1)}
    assert preprocessor.ledger.tickets() == [round(image_cost(27 * 27))]  # 1500 x 1500 at the cap: 27 x 27 tokens
    # a second photo finds 1.42 s ahead, over 1 s: refused, and from its header alone (this one's body is cut
    # short, which decoding would have named)
    truncated = _png(1500, 1500)[:200]
    with pytest.raises(Refused, match=r"busy: 1\.4 s"):
        preprocessor(np.array([[truncated]], dtype=object), None)
    preprocessor.ledger.release([ticket])
    # admitted, then its decode fails: its ticket goes with it
    with pytest.raises(InputError, match="corrupt or truncated PNG"):
        preprocessor(np.array([[truncated]], dtype=object), None)
    assert preprocessor.ledger.tickets() == []
    # queries are not ticketed, and carry no TICKET
    assert "TICKET" not in preprocessor(None, np.array([[b"a price chart"]], dtype=object))


def test_with_admission_off_the_ticket_is_empty(preprocessor):
    preprocessor.policy = Policy(max_wait_s=0)
    for _ in range(3):
        outputs = preprocessor(np.array([[_png(1500, 1500)]], dtype=object), None)
        assert outputs["TICKET"].tolist() == [[b""]]
    assert preprocessor.ledger.tickets() == []


def test_ledgers_of_servers_gone_are_swept(tmp_path):
    gone = multiprocessing.get_context("spawn").Process(target=int)
    gone.start()
    gone.join()
    ours, stale = tmp_path / ledger_folder().name, tmp_path / ledger_folder(gone.pid).name
    for folder in (ours, stale, tmp_path / "colqwen2-admission-x"):
        Ledger(folder).write_rate("colqwen2_encoder_fp32", 0.001)
    assert sweep_ledgers(tmp_path) == [stale]
    assert ours.is_dir() and not stale.exists() and (tmp_path / "colqwen2-admission-x").is_dir()
