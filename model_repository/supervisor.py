"""Keep Triton serving without an operator: restart it when it is dead, never because it is busy.

Triton keeps a Python-backend model READY after its stub process dies and fails every request to
it from then on; nothing inside the server recovers. The supervisor owns the `tritonserver` process
(`make serve`, the demo and the container's `serve` entry point all run under it) and checks, once
a second:

- the server process: exited -> restart at once;
- the stubs it had when it became ready (`/proc`): one gone -> restart at once;
- every `interval` seconds, the SDK's canary (a small image and a query through the public
  ensembles, on the health lane: Triton priority 1, served before user traffic and never refused by
  a full queue). A canary that fails `failures` times in a row, or stays unanswered `hang_after`
  seconds, -> restart. A busy server is not dead: a canary refused for a full queue, or still
  waiting behind a long batch, counts as busy, not as a failure.

More than `max_restarts` restarts within `window` seconds means restarting does not help (a broken
export, a GPU gone): the supervisor gives up and exits 1, so the next level (Kubernetes, systemd,
an operator) sees it.

It serves `GET /livez` and `GET /metrics` (Prometheus text) on its own port. `/livez` is 200 while
Triton is live, starting or being restarted by the supervisor, and 503 only when it is dead and
nobody is fixing it (restarts off, or given up); so a Kubernetes liveness probe on it never fights
the supervisor's own restarts, and still restarts the pod when the supervisor itself is stuck.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any

from .server import TritonError, TritonServer

log = logging.getLogger("colqwen2.supervisor")

# Why the supervisor restarted Triton (the `reason` label of colqwen2_supervisor_restarts_total).
REASONS = ("server_exited", "stub_died", "canary_failed", "canary_hung", "not_ready")


@dataclass(frozen=True)
class SupervisorSettings:
    interval: float = 10.0  # seconds between canaries
    failures: int = 3  # failed canaries in a row before a restart
    hang_after: float = 180.0  # a canary unanswered this long counts as failed (longer than any batch)
    max_restarts: int = 5  # restarts allowed within `window` seconds before giving up
    window: float = 900.0
    ready_timeout: float = 600.0  # per start: model loading, TensorRT engine builds
    restart: bool = True  # False: only report (the liveness endpoint then says dead)
    host: str = "127.0.0.1"
    port: int = 0  # /livez and /metrics; 0: no endpoint
    tick: float = 1.0

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.failures < 1 or self.hang_after <= 0 or self.max_restarts < 0:
            raise ValueError("interval and hang_after must be > 0, failures >= 1, max_restarts >= 0")


def canary_outcome(error: BaseException | None) -> str:
    """`ok`, `busy` (the server is there but loaded: queue full, or no answer within the canary's timeout,
    which the hang rule judges) or `failed` (anything else: a dead model process, wrong vectors, no server)."""
    from colqwen2_client.errors import RequestTimeoutError, ServerBusyError

    if error is None:
        return "ok"
    if isinstance(error, (ServerBusyError, RequestTimeoutError)):
        return "busy"
    return "failed"


@dataclass
class Observation:
    """What one tick saw; `dead_reason` turns it into a verdict (plain data, unit-tested)."""

    exit_code: int | None = None  # the server's, once it has exited
    missing_stubs: tuple[str, ...] = ()
    failed_canaries: int = 0  # in a row
    pending_for: float = 0.0  # seconds the current canary has waited
    last_error: str = ""


def dead_reason(seen: Observation, settings: SupervisorSettings) -> tuple[str, str] | None:
    """(reason label, message) when the server is dead, else None. Busy is never dead."""
    if seen.exit_code is not None:
        return "server_exited", f"tritonserver exited with code {seen.exit_code}"
    if seen.missing_stubs:
        return "stub_died", f"Python backend stub died: {', '.join(seen.missing_stubs)}"
    if seen.failed_canaries >= settings.failures:
        return "canary_failed", f"{seen.failed_canaries} canaries failed in a row, the last: {seen.last_error}"
    if seen.pending_for >= settings.hang_after:
        return "canary_hung", f"canary unanswered for {seen.pending_for:.0f} s"
    return None


@dataclass
class _Canary:
    generation: int = -1
    started: float | None = None  # monotonic, while one is in flight
    last_run: float = -1e9
    failed: int = 0
    last_error: str = ""
    last_ok: float | None = None  # wall-clock time of the last pass
    last_seconds: float = 0.0
    results: Counter = field(default_factory=Counter)


class Supervisor:
    """Run `server` and keep it serving. `start()` then `watch()` (blocking), or `with supervisor:`
    (watching on a background thread)."""

    def __init__(
        self,
        server: TritonServer,
        settings: SupervisorSettings | None = None,
        server_log: IO | None = None,
        canary: Callable[[float], Any] | None = None,
    ) -> None:
        self.server = server
        self.settings = settings or SupervisorSettings()
        self.server_log = server_log
        self._canary_call = canary or self._sdk_canary
        self.state = "starting"  # starting | live | recovering | dead | given_up | stopped
        self.reason = ""
        self.restarts: Counter = Counter()
        self._restart_times: deque[float] = deque()
        self._expected_stubs: dict[str, int] = {}
        self._canary = _Canary()
        self._generation = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._http: ThreadingHTTPServer | None = None
        self.ready_seconds: list[float] = []  # each start's time to ready

    # -- the server's life -------------------------------------------------------------------------
    def start(self) -> float:
        """Start Triton, serve /livez and /metrics, wait until every model is ready; seconds taken."""
        if self.settings.port and self._http is None:
            self._serve_endpoint()
        return self._start_server()

    def _start_server(self) -> float:
        self.server.start(self.server_log)
        seconds = self.server.wait_ready(self.settings.ready_timeout)
        with self._lock:
            self._generation += 1
            self._expected_stubs = self.server.stubs()
            self._canary = _Canary(results=self._canary.results, last_ok=self._canary.last_ok)
            self.state, self.reason = "live", ""
        self.ready_seconds.append(seconds)
        return seconds

    def _spend_restart(self) -> bool:
        """Take one restart from the budget (`max_restarts` within `window` seconds); False when none is left."""
        now = time.monotonic()
        while self._restart_times and now - self._restart_times[0] > self.settings.window:
            self._restart_times.popleft()
        if len(self._restart_times) >= self.settings.max_restarts:
            return False
        self._restart_times.append(now)
        return True

    def _give_up(self, why: str) -> bool:
        with self._lock:
            self.state, self.reason = "given_up", why
        log.error("supervisor: giving up: %s", why)
        return False

    def restart(self, reason: str, message: str) -> bool:
        """Stop (killing if it hangs) and start Triton again; False once the restart budget is spent."""
        if not self._spend_restart():
            window = self.settings.window
            return self._give_up(f"{message}; {len(self._restart_times)} restarts in {window:.0f} s did not help")
        self.restarts[reason] += 1
        with self._lock:
            self.state, self.reason = "recovering", message
        log.warning("supervisor: restarting Triton (%s): %s", reason, message)
        started = time.monotonic()
        self.server.stop(timeout=3)  # a dead server gets 3 s to drain the requests it can still finish
        while not self._stopping.is_set():
            try:
                self._start_server()
                log.warning("supervisor: Triton ready again %.1f s after the restart began", time.monotonic() - started)
                return True
            except TritonError as exc:
                self.server.stop(timeout=5)
                if self._stopping.is_set():
                    break
                self.restarts["not_ready"] += 1
                log.error("supervisor: restart failed: %s", exc)
                if not self._spend_restart():
                    return self._give_up(f"{message}; then: {exc}")
        return False

    # -- watching ----------------------------------------------------------------------------------
    def observe(self) -> Observation:
        process = self.server.process
        code = None if process is None else process.poll()
        with self._lock:
            expected = dict(self._expected_stubs)
            canary = self._canary
            pending = 0.0 if canary.started is None else time.monotonic() - canary.started
            failed, last_error = canary.failed, canary.last_error
        missing: tuple[str, ...] = ()
        if code is None and expected:
            alive = self.server.stubs()
            missing = tuple(sorted(n for n, pid in expected.items() if alive.get(n) != pid))
            if missing and process is not None:
                code = process.poll()  # the server itself may have died meanwhile, taking its stubs along
        return Observation(code, missing, failed, pending, last_error)

    def check_once(self) -> bool:
        """One tick: restart a dead server (if allowed), launch a canary when due; False to stop watching."""
        verdict = dead_reason(self.observe(), self.settings)
        if verdict is not None:
            reason, message = verdict
            if not self.settings.restart:
                with self._lock:
                    if self.state != "dead":
                        log.error("supervisor: Triton is dead (%s): %s; restarts are off", reason, message)
                    self.state, self.reason = "dead", message
                return True
            return self.restart(reason, message)
        self._maybe_canary()
        return True

    def watch(self) -> int:
        """Check every tick until stop(); 1 if the supervisor gave up, else 0."""
        while not self._stopping.is_set():
            if not self.check_once():
                return 0 if self._stopping.is_set() else 1
            self._stopping.wait(self.settings.tick)
        return 0

    def _maybe_canary(self) -> None:
        with self._lock:
            canary = self._canary
            if canary.started is not None or time.monotonic() - canary.last_run < self.settings.interval:
                return
            canary.started = canary.last_run = time.monotonic()
            generation = self._generation
        threading.Thread(target=self._run_canary, args=(generation,), name="canary", daemon=True).start()

    def _run_canary(self, generation: int) -> None:
        started = time.monotonic()
        error: BaseException | None = None
        try:  # the deadline lies past hang_after, so a hung server is caught by the hang rule first
            self._canary_call(self.settings.hang_after + 10)
        except Exception as exc:  # judged below; a canary must never kill the supervisor
            error = exc
        outcome = canary_outcome(error)
        with self._lock:
            if generation != self._generation:
                return  # answered by a server that has been replaced since
            canary = self._canary
            canary.started = None
            canary.results[outcome] += 1
            canary.last_seconds = time.monotonic() - started
            if outcome == "ok":
                canary.failed, canary.last_error, canary.last_ok = 0, "", time.time()
            elif outcome == "failed":
                canary.failed += 1
                canary.last_error = str(error)[:500]
        if outcome == "failed":
            log.warning("supervisor: canary failed: %s", str(error)[:500])

    def _sdk_canary(self, timeout: float) -> Any:
        from colqwen2_client import ColQwen2Client

        host = "127.0.0.1" if self.server.host in ("0.0.0.0", "::", "") else self.server.host  # listening on all
        url = f"grpc://{host}:{self.server.grpc_port}"
        with ColQwen2Client(url, timeout=timeout, max_retries=0) as client:
            return client.canary()

    # -- background use ----------------------------------------------------------------------------
    def __enter__(self) -> Supervisor:
        self.start()
        self._thread = threading.Thread(target=self.watch, name="supervisor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def request_stop(self) -> None:
        """Stop watching and restarting (safe from a signal handler: it only sets a flag)."""
        self._stopping.set()

    def stop(self) -> None:
        self.request_stop()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(30)
        self.server.stop()
        with self._lock:
            self.state = "stopped"
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None

    # -- reporting ---------------------------------------------------------------------------------
    @property
    def live(self) -> bool:
        return self.state in ("starting", "live", "recovering")

    def status(self) -> dict[str, Any]:
        with self._lock:
            canary = self._canary
            return {
                "state": self.state,
                "reason": self.reason,
                "restarts": dict(self.restarts),
                "canary": {
                    "results": dict(canary.results),
                    "failed_in_a_row": canary.failed,
                    "pending_seconds": round(time.monotonic() - canary.started, 1) if canary.started else 0.0,
                    "last_ok": canary.last_ok,
                    "last_seconds": round(canary.last_seconds, 3),
                    "last_error": canary.last_error,
                },
                "stubs": sorted(self._expected_stubs),
            }

    def metrics(self) -> str:
        status = self.status()
        lines = [
            "# HELP colqwen2_supervisor_restarts_total Triton restarts by the supervisor, by reason.",
            "# TYPE colqwen2_supervisor_restarts_total counter",
            *(f'colqwen2_supervisor_restarts_total{{reason="{r}"}} {self.restarts.get(r, 0)}' for r in REASONS),
            "# HELP colqwen2_supervisor_canaries_total Canary inferences by outcome (ok, busy, failed).",
            "# TYPE colqwen2_supervisor_canaries_total counter",
            *(
                f'colqwen2_supervisor_canaries_total{{outcome="{o}"}} {status["canary"]["results"].get(o, 0)}'
                for o in ("ok", "busy", "failed")
            ),
            "# HELP colqwen2_supervisor_live 1 while Triton is live, starting or being restarted; 0 when dead.",
            "# TYPE colqwen2_supervisor_live gauge",
            f"colqwen2_supervisor_live {int(self.live)}",
            "# HELP colqwen2_supervisor_canary_seconds How long the last canary took.",
            "# TYPE colqwen2_supervisor_canary_seconds gauge",
            f"colqwen2_supervisor_canary_seconds {status['canary']['last_seconds']}",
        ]
        return "\n".join(lines) + "\n"

    def _serve_endpoint(self) -> None:
        supervisor = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/livez":
                    body = json.dumps(supervisor.status()).encode()
                    self._send(200 if supervisor.live else 503, body, "application/json")
                elif path == "/metrics":
                    self._send(200, supervisor.metrics().encode(), "text/plain; version=0.0.4")
                else:
                    self._send(404, b'{"detail": "not found: GET /livez or /metrics"}', "application/json")

            def _send(self, code: int, body: bytes, kind: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # probes every few seconds: keep the log quiet
                pass

        self._http = ThreadingHTTPServer((self.settings.host, self.settings.port), Handler)
        self._http.daemon_threads = True
        threading.Thread(target=self._http.serve_forever, name="supervisor-http", daemon=True).start()
