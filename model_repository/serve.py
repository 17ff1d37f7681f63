"""`make serve`: render the model repository for an export and run Triton under the supervisor.

    python -m model_repository.serve --artifacts artifacts/tiny

The supervisor (model_repository/supervisor.py) restarts Triton when it is dead (its process gone,
a model's stub process gone, canaries failing) and never because it is busy; it serves /livez and
/metrics on --supervisor-port. Ctrl-C (or SIGTERM) shuts everything down cleanly. Listens on
127.0.0.1 unless --host is given.
"""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import signal
import sys
from pathlib import Path

from .render import RenderError, add_render_arguments, options_from_args, render
from .server import TritonError, TritonServer
from .supervisor import Supervisor, SupervisorSettings

# A CPU-only host: no GPU metrics (NVML, DCGM) and no pinned-memory pool, which Triton would try and fail
# to set up, logging errors a newcomer reads as failures. A few CUDA lines remain that no flag removes.
CPU_HOST_FLAGS = ("--allow-gpu-metrics=false", "--pinned-memory-pool-byte-size=0", "--cuda-memory-pool-byte-size=0:0")
CPU_HOST_NOTE = (
    "serve: CPU-only host: Triton's lines 'CudaDriverHelper has not been initialized' and 'unable to create "
    "stream ... CUDA driver version is insufficient' are expected here and harmless (no GPU is used)"
)


def add_supervisor_arguments(parser: argparse.ArgumentParser) -> None:
    d = SupervisorSettings()
    group = parser.add_argument_group("supervision (self-healing)")
    group.add_argument(
        "--no-restart",
        action="store_true",
        help="only report a dead server (on /livez), never restart it (default: restart)",
    )
    group.add_argument(
        "--canary-interval",
        type=float,
        default=d.interval,
        metavar="S",
        help="seconds between canary requests (a tiny image and a query) (default: %(default)s)",
    )
    group.add_argument(
        "--canary-failures",
        type=int,
        default=d.failures,
        help="failed canaries in a row that mean dead (default: %(default)s)",
    )
    group.add_argument(
        "--hang-after",
        type=float,
        default=d.hang_after,
        help="seconds a canary may wait before it means dead (default: %(default)s)",
    )
    group.add_argument(
        "--max-restarts",
        type=int,
        default=d.max_restarts,
        help="within --restart-window, then give up and exit 1 (default: %(default)s)",
    )
    group.add_argument(
        "--restart-window",
        type=float,
        default=d.window,
        metavar="S",
        help="seconds over which --max-restarts counts (default: %(default)s)",
    )
    group.add_argument(
        "--supervisor-port", type=int, default=None, help="/livez and /metrics (default: metrics port + 1; 0: off)"
    )


def supervisor_settings(args: argparse.Namespace) -> SupervisorSettings:
    port = args.supervisor_port if args.supervisor_port is not None else args.metrics_port + 1
    return SupervisorSettings(
        interval=args.canary_interval,
        failures=args.canary_failures,
        hang_after=args.hang_after,
        max_restarts=args.max_restarts,
        window=args.restart_window,
        ready_timeout=args.ready_timeout,
        restart=not args.no_restart,
        host=args.host,
        port=port,
    )


def admin_key(path: Path | None) -> str:
    """The admin key from `path`; a random one (nobody can use the admin APIs) when it is missing or empty."""
    if path is None or str(path) == "":
        return ""
    key = path.read_text().strip() if path.is_file() else ""
    if not key:
        logging.getLogger("colqwen2.serve").warning("no admin key in %s: admin APIs locked with a random key", path)
        key = secrets.token_urlsafe(32)
    if not key.isascii() or any(c in key for c in ",:= \t\n"):
        raise ValueError(f"the admin key in {path} must be ASCII without spaces, ',', ':' or '='")
    return key


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model_repository.serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_render_arguments(parser)
    parser.add_argument(
        "--repository",
        type=Path,
        metavar="DIR",
        help="where to render (default: build/model_repository/<name of the export folder>)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address every port listens on (default: %(default)s)")
    parser.add_argument("--http-port", type=int, default=8000, help="Triton's HTTP/REST port (default: %(default)s)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="Triton's gRPC port (default: %(default)s)")
    parser.add_argument(
        "--metrics-port", type=int, default=8002, help="Triton's Prometheus metrics port (default: %(default)s)"
    )
    parser.add_argument("--ready-timeout", type=float, default=600.0, help="seconds per start (default: %(default)s)")
    parser.add_argument(
        "--triton-binary", default="", help="a tritonserver with its own backends (the container); default: pytriton's"
    )
    parser.add_argument(
        "--backend-directory",
        default="",
        help="backends for --triton-binary other than its own (a folder holding python/ with the Python backend "
        "and its stub); default: the binary's own",
    )
    parser.add_argument(
        "--exit-timeout", type=int, default=5, help="seconds Triton drains on shutdown (default: %(default)s)"
    )
    parser.add_argument(
        "--admin-key-file",
        type=Path,
        help="lock Triton's admin APIs (model repository, shared memory, trace, logging) behind the key in this "
        "file, sent as header `admin-key`; a missing or empty file locks them with a random key (default: open)",
    )
    parser.add_argument(
        "--triton-arg",
        action="append",
        default=[],
        metavar="FLAG",
        help="one more tritonserver flag, repeatable, e.g. --triton-arg=--log-verbose=1 (default: none)",
    )
    add_supervisor_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    repository = args.repository or Path("build/model_repository") / args.artifacts.resolve().name
    try:
        repository = render(options_from_args(args, repository))
        settings = supervisor_settings(args)
        key = admin_key(args.admin_key_file)
    except (RenderError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    summary = json.loads((repository / "render.json").read_text())
    extra = tuple(args.triton_arg)
    if summary.get("device") == "cpu":
        extra = (*CPU_HOST_FLAGS, *extra)
        print(CPU_HOST_NOTE, file=sys.stderr, flush=True)
    server = TritonServer(
        repository, args.host, args.http_port, args.grpc_port, args.metrics_port,
        extra_args=extra, binary=args.triton_binary, backend_directory=args.backend_directory,
        exit_timeout=args.exit_timeout,
        admin_key=key,
    )  # fmt: skip
    supervisor = Supervisor(server, settings)
    stopping = False

    def shut_down(signum: int, _frame: object) -> None:
        # Only signal here: waiting inside a handler would deadlock with the main thread's wait().
        nonlocal stopping
        print(f"\n{signal.Signals(signum).name}: stopping Triton (again to kill) ...", file=sys.stderr, flush=True)
        supervisor.request_stop()
        server.interrupt(force=stopping)
        stopping = True

    signal.signal(signal.SIGINT, shut_down)
    signal.signal(signal.SIGTERM, shut_down)
    try:
        seconds = supervisor.start()
    except (TritonError, OSError) as exc:
        supervisor.stop()
        if stopping:
            return 0
        print(f"error: {exc}", file=sys.stderr)
        return 1
    served = ", ".join(f"{name} ({variant})" for name, variant in summary["ensembles"].items())
    watch = f"supervisor http://{args.host}:{settings.port}/livez" if settings.port else "supervisor on"
    print(
        f"\nColQwen2 on Triton is ready in {seconds:.1f} s: http://{server.http_url}  grpc://{server.grpc_url}  "
        f"metrics http://{args.host}:{args.metrics_port}/metrics  {watch}\nmodels: {served}; images at "
        f"{summary['resolution']} resolution, at most {summary['max_visual_tokens']} visual tokens "
        f"(repository {repository}); Ctrl-C stops.",
        file=sys.stderr,
        flush=True,
    )
    code = supervisor.watch()
    supervisor.stop()
    return 0 if stopping else code


if __name__ == "__main__":
    sys.exit(main())
