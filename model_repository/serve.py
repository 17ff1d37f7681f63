"""`make serve`: render the model repository for an export and run Triton in the foreground.

    python -m model_repository.serve --artifacts artifacts/tiny

Ctrl-C (or SIGTERM) shuts the server down cleanly. Listens on 127.0.0.1 unless --host is given.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from .render import RenderError, add_render_arguments, options_from_args, render
from .server import TritonError, TritonServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_render_arguments(parser)
    parser.add_argument("--repository", type=Path, help="where to render (default build/model_repository/<name>)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    args = parser.parse_args(argv)
    repository = args.repository or Path("build/model_repository") / args.artifacts.resolve().name
    try:
        repository = render(options_from_args(args, repository))
    except RenderError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    server = TritonServer(repository, args.host, args.http_port, args.grpc_port, args.metrics_port)
    stopping = False

    def shut_down(signum: int, _frame: object) -> None:
        # Only signal here: waiting inside a handler would deadlock with the main thread's wait().
        nonlocal stopping
        print(f"\n{signal.Signals(signum).name}: stopping Triton (again to kill) ...", file=sys.stderr, flush=True)
        server.interrupt(force=stopping)
        stopping = True

    signal.signal(signal.SIGINT, shut_down)
    signal.signal(signal.SIGTERM, shut_down)
    try:
        server.start()
        process = server.process
        seconds = server.wait_ready(args.ready_timeout)
    except TritonError as exc:
        server.stop()
        if stopping:
            return 0
        print(f"error: {exc}", file=sys.stderr)
        return 1
    summary = json.loads((repository / "render.json").read_text())
    served = ", ".join(f"{name} ({variant})" for name, variant in summary["ensembles"].items())
    print(
        f"\nColQwen2 on Triton is ready in {seconds:.1f} s: http://{server.http_url}  grpc://{server.grpc_url}  "
        f"metrics http://{args.host}:{args.metrics_port}/metrics\nmodels: {served}; images at "
        f"{summary['resolution']} resolution, at most {summary['max_visual_tokens']} visual tokens "
        f"(repository {repository}); Ctrl-C stops.",
        file=sys.stderr,
        flush=True,
    )
    code = process.wait() if process is not None else 0
    server.stop()
    return 0 if stopping else code


if __name__ == "__main__":
    sys.exit(main())
