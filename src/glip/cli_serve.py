"""``glip serve``: the HTTP API and web page."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from collections.abc import Callable

from glip.cli_support import non_negative_float, non_negative_int, positive_float, positive_int

logger = logging.getLogger(__name__)

SERVE_EPILOG = """\
routes: GET / (web page), POST /detect (multipart: image file + classes "a,b" or caption [+ spans
JSON [[start, end], ...]], optional threshold), GET /health (model, batching counters).
Refused requests get a 4xx status and {"error": "..."}. The API has no authentication: keep the
default --host 127.0.0.1 unless the network in front of it is trusted.

exit status: 0 stopped with Ctrl-C, 1 failed at run time (e.g. the port is in use), 2 usage error."""


def add_parsers(commands, command: Callable[..., argparse.ArgumentParser]) -> None:
    """Register the subcommand on ``commands``; ``command(commands, name, summary)`` makes a leaf parser."""
    from glip.cli import _add_model_arguments

    serve = command(commands, "serve", "serve a model over HTTP, with a web page to try prompts", epilog=SERVE_EPILOG)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, loopback "
                       "only; 0.0.0.0 for every interface)")
    serve.add_argument("--port", type=non_negative_int, default=8000, help="TCP port, 0 = any free one (default 8000)")
    serve.add_argument("--max-batch", type=positive_int, default=8,
                       help="most requests sharing one forward pass (default 8)")
    serve.add_argument("--batch-wait-ms", type=non_negative_float, default=5.0,
                       help="how long a request waits for others with the same prompt (default 5)")
    serve.add_argument("--max-upload-mb", type=positive_float, default=20.0,
                       help="largest image upload in MiB; larger ones get HTTP 413 (default 20)")
    serve.add_argument("--threads", type=non_negative_int, default=0,
                       help="torch CPU threads of the model's worker, 0 = torch's default (default 0)")
    _add_model_arguments(serve)
    serve.set_defaults(handler=command_serve)


def command_serve(args: argparse.Namespace) -> int:
    """Bind the port (fails at once when busy), load the model once, serve until Ctrl-C."""
    from glip.cli import EXIT_OK, _check_model_arguments, load_model_from_args

    _check_model_arguments(args)
    try:
        from glip.serve import ServeOptions, bind_socket, create_app, run_server
        from glip.serve.server import url_of
    except ImportError as error:
        raise ImportError(f"glip serve needs the serve extra: pip install 'glip[serve]' ({error})") from error
    sock = bind_socket(args.host, args.port)  # OSError naming host:port when busy: exit status 1
    if not _is_loopback(args.host):
        logger.warning("listening on %s: the API has no authentication, anyone who reaches it can use it", args.host)
    model = load_model_from_args(args)
    options = ServeOptions(max_batch=args.max_batch, batch_wait_ms=args.batch_wait_ms,
                           max_upload_mb=args.max_upload_mb, threads=args.threads)
    name = args.model if args.model is not None else str(args.checkpoint)
    app = create_app(model, options, model_name=name)
    print(f"glip serve: {name} on {url_of(sock)}/ (Ctrl-C stops)", flush=True)
    try:
        run_server(app, sock, log_level="info" if getattr(args, "verbose", False) else "warning")
    except KeyboardInterrupt:
        # uvicorn finishes the requests under way, then re-raises the Ctrl-C: for a server that is
        # its normal end, not an interrupted job (exit 0, not 130).
        pass
    print("glip serve: stopped", file=sys.stderr)
    return EXIT_OK


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
