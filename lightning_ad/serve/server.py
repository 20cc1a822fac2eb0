"""``lightning-ad serve``: the LitServe server of a fitted checkpoint, its page and its command line.

::

    lightning-ad serve --ckpt_path fit.ckpt --port 8000            # or: python -m lightning_ad.serve ...
    curl -F file=@000.png "http://127.0.0.1:8000/predict?overlay=1"

Endpoints
    * ``POST /predict``: one image (multipart file, JSON ``{"image": base64}`` or a bare image
      body); answers the detection as JSON (:func:`~lightning_ad.serve.api.result_dict`), or a
      4xx JSON ``{"error": code, "detail": message, "status": n}`` (:mod:`~lightning_ad.serve.payload`).
    * ``GET /health``: LitServe's readiness check (``ok`` once the inference workers loaded the
      checkpoint, else 503).
    * ``POST /normal``: adds confirmed-good images to the served bank (``Authorization: Bearer <token>``;
      off unless the server has a token); see :mod:`~lightning_ad.serve.growth` for the token, the grown
      checkpoint written beside the served one, the swap and what a restart serves.
    * ``GET /info``: the detector's :attr:`~lightning_ad.inference.detector.Detector.info` (input contract,
      backbone, thresholds, ``bank_size`` ...) for the bank served now, ``bank_changed`` (when it last
      changed), ``checkpoint`` (the file it came from), ``adding`` (whether ``POST /normal`` is on) and
      the server's settings (batching, limits).
    * ``GET /``: the inspection page (static files of this package, no external asset).

Processes: LitServe's API server (uvicorn; the gate of :mod:`~lightning_ad.serve.gate` runs
there) and one inference worker per device (``--devices``; on the CPU, the number of
worker processes), each holding one :class:`~lightning_ad.inference.detector.Detector`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, List, Mapping, Optional

from .. import checks
from .growth import TOKEN_ENV, check_token_value
from .payload import Limits

__all__ = ["build_server", "serve_main", "resolve_token", "STATIC_FILES"]

STATIC = Path(__file__).resolve().parent / "static"
#: URL path -> (file in ``static/``, media type). Only these are served.
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
    "/static/favicon.svg": ("favicon.svg", "image/svg+xml"),
    "/favicon.ico": ("favicon.svg", "image/svg+xml"),  # for clients that ask without reading the page's link
}
#: The page loads nothing from elsewhere; overlays come back as data: URLs.
_CSP = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; connect-src 'self'"
_HOSTS = ("127.0.0.1", "0.0.0.0", "::")


def _resolve_accelerator(accelerator: str) -> str:
    if accelerator != "auto":
        return accelerator
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def build_server(
    ckpt_path: str,
    *,
    accelerator: str = "auto",
    devices: int = 1,
    max_batch_size: int = 8,
    batch_timeout: float = 0.01,
    limits: Optional[Limits] = None,
    timeout: float = 30.0,
    normal_token: Optional[str] = None,
    grown_ckpt: Optional[str] = None,
    say: Optional[Callable[[str], None]] = None,
) -> Any:
    """A ready-to-run ``litserve.LitServer`` for ``ckpt_path`` (call ``.run(host=..., port=...)``).

    The checkpoint is read once here (errors are raised before any process starts) for
    ``GET /info``; the inference workers load their own copy. ``normal_token``: the token of
    ``POST /normal`` (None: adding is off); ``grown_ckpt``: the grown checkpoint (default
    ``<stem>.grown.ckpt`` beside ``ckpt_path``), served instead of ``ckpt_path`` when it was grown
    from it (:func:`~lightning_ad.serve.growth.choose_served`); ``say``: where that is told (stderr).
    """
    from .api import LITSERVE_AVAILABLE, DetectorAPI

    if not LITSERVE_AVAILABLE:
        raise ImportError("lightning-ad serve needs LitServe: pip install -e '.[serve]'")
    import litserve as ls
    from fastapi import Response
    from fastapi.responses import JSONResponse

    from ..errors import CheckpointError, ConfigurationError
    from ..inference.detector import Detector
    from .gate import PredictGate
    from .growth import Growth, bank_facts, choose_served, default_grown_path

    say = say or (lambda line: print(line, file=sys.stderr, flush=True))

    limits = limits or Limits()
    checks.positive_int("max_batch_size", max_batch_size)
    checks.non_negative_number("batch_timeout", batch_timeout, unit="seconds")
    checks.positive_int("devices", devices)
    accelerator = _resolve_accelerator(accelerator)
    if accelerator not in ("cpu", "cuda", "mps"):
        raise ConfigurationError(f"accelerator={accelerator!r}: use auto, cpu, cuda or mps")

    if normal_token is not None:
        try:
            check_token_value(normal_token, "normal_token")
        except ValueError as err:
            raise ConfigurationError(str(err)) from None
    origin = Path(ckpt_path)
    if not origin.is_file():
        raise CheckpointError(f"checkpoint {str(ckpt_path)!r} does not exist (--ckpt_path).")
    grown = Path(grown_ckpt) if grown_ckpt else default_grown_path(origin)
    serving, note = choose_served(origin, grown, adding=normal_token is not None)
    if normal_token is not None and not os.access(grown.parent, os.W_OK):
        raise ConfigurationError(f"cannot write the grown checkpoint {str(grown)!r} (its folder is not writable): "
                                 "name another place with --grown_ckpt.")
    probe = Detector.from_checkpoint(serving, device="cpu", batch_size=1)
    facts = bank_facts(probe, serving)
    del probe
    if note:
        say(note)

    # Adding images: the shared lock, bank version and facts are made here, before LitServe starts any process.
    growth = None
    workers = devices
    if normal_token is not None:
        grower_device = {"cpu": "cpu", "cuda": "cuda:0", "mps": "mps"}[accelerator]
        growth = Growth(origin, grown, serving, normal_token, workers, grower_device, max_batch_size, facts)
    api = DetectorAPI(str(serving), limits=limits, max_batch_size=max_batch_size, batch_timeout=float(batch_timeout),
                      link=growth.link if growth is not None else None)
    on_cpu = accelerator == "cpu"
    server = ls.LitServer(
        api,
        accelerator=accelerator,
        devices=1 if on_cpu else devices,
        workers_per_device=devices if on_cpu else 1,
        timeout=timeout,
        info_path="/litserve/info",
        middlewares=[(PredictGate, {"limits": limits, "api_path": api.api_path})],
    )
    settings = {"accelerator": accelerator, "devices": devices, "max_batch_size": max_batch_size,
                "batch_timeout": float(batch_timeout), "timeout": timeout, **limits.to_dict()}
    adding_off = {"enabled": False, "endpoint": "POST /normal", "grown_ckpt": grown.name, "updates": 0}

    pages = {path: ((STATIC / name).read_bytes(), media) for path, (name, media) in STATIC_FILES.items()}
    # LitServe answers "/" with a line of text: the page replaces it.
    server.app.router.routes[:] = [r for r in server.app.router.routes if getattr(r, "path", None) != "/"]

    def page(path: str):
        body, media = pages[path]

        async def endpoint() -> Response:
            return Response(content=body, media_type=media.split(";")[0],
                            headers={"Content-Security-Policy": _CSP, "Cache-Control": "no-cache",
                                     "X-Content-Type-Options": "nosniff", "Content-Type": media})

        return endpoint

    for path in pages:
        server.app.add_api_route(path, page(path), methods=["GET"], include_in_schema=False)

    async def info_endpoint() -> JSONResponse:
        if growth is None:
            return JSONResponse(content=dict(facts, adding=adding_off, server=settings))
        return JSONResponse(content=dict(growth.facts(), adding=growth.adding(), server=settings))

    server.app.add_api_route("/info", info_endpoint, methods=["GET"])
    server.app.add_api_route("/normal", _normal_endpoint(growth, limits), methods=["POST"])
    return server


def _normal_endpoint(growth: Any, limits: Limits) -> Callable:
    """``POST /normal``: the token first (nothing is read before it passes), then the images, then the update."""
    from fastapi import Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    from .growth import check_bearer
    from .payload import MAX_NORMAL_IMAGES, RequestError, decode_images, parse_images

    cap = limits.max_body * MAX_NORMAL_IMAGES

    async def read_body(request: Request) -> bytes:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > cap:
            raise RequestError(413, "too_large", f"the request body is {declared} bytes, over the server's limit of "
                                                 f"{MAX_NORMAL_IMAGES} images of {limits.max_bytes} bytes (--max_bytes).")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > cap:
                raise RequestError(413, "too_large", f"the request body is over the server's limit of {MAX_NORMAL_IMAGES} "
                                                     f"images of {limits.max_bytes} bytes (--max_bytes).")
            chunks.append(chunk)
        return b"".join(chunks)

    async def normal_endpoint(request: Request) -> JSONResponse:
        refusal = check_bearer(growth.token if growth is not None else None, request.headers.get("authorization"))
        if refusal is not None:
            headers = {"WWW-Authenticate": 'Bearer realm="lightning_ad"'} if refusal.status == 401 else None
            return JSONResponse(status_code=refusal.status, content=refusal.to_dict(), headers=headers)
        try:
            body = await read_body(request)
            uploads = parse_images(request.headers.get("content-type"), body, dict(request.query_params), limits)
            images = await run_in_threadpool(decode_images, uploads, limits)
        except RequestError as err:
            return JSONResponse(status_code=err.status, content=err.to_dict(),
                                headers={"Connection": "close"} if err.status == 413 else None)
        status, answer = await run_in_threadpool(growth.update, images, [u.filename for u in uploads])
        return JSONResponse(status_code=status, content=answer)

    # FastAPI reads the annotations to find the request parameter: postponed ones would name a local import
    normal_endpoint.__annotations__ = {"request": Request, "return": JSONResponse}
    return normal_endpoint


def resolve_token(option: Optional[str], environ: Mapping[str, str]) -> Optional[str]:
    """The token of ``POST /normal``: ``--normal_token`` or the environment variable (an empty one is unset); both
    set to different values is an error, and so is a token too short or with spaces (``ValueError``).

    >>> resolve_token(None, {}) is None
    True
    >>> resolve_token(None, {TOKEN_ENV: "t" * 16}) == "t" * 16
    True
    """
    env = environ.get(TOKEN_ENV) or None
    if option is not None and env is not None and option != env:
        raise ValueError(f"--normal_token and {TOKEN_ENV} are both set, to different tokens: set one")
    if option is not None:
        return check_token_value(option, "--normal_token")
    return None if env is None else check_token_value(env, TOKEN_ENV)


def _parser() -> argparse.ArgumentParser:
    defaults = Limits()
    parser = argparse.ArgumentParser(
        prog="lightning-ad serve",
        description="Serve a fitted checkpoint over HTTP with LitServe: POST /predict, GET /info, GET /health, "
                    "POST /normal (with a token) and the inspection page at GET /.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--ckpt_path", required=True, help="checkpoint written by lightning-ad fit")
    parser.add_argument("--host", default="127.0.0.1", choices=_HOSTS,
                        help="address to listen on (0.0.0.0 or :: expose the server to the network)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (1024..65535)")
    parser.add_argument("--accelerator", default="auto", choices=("auto", "cpu", "cuda", "mps"), help="where the detector runs")
    parser.add_argument("--devices", type=int, default=1,
                        help="GPUs to use, one inference worker each; on the CPU, the number of inference worker processes")
    parser.add_argument("--max_batch_size", type=int, default=8, help="most requests scored in one forward pass")
    parser.add_argument("--batch_timeout", type=float, default=0.01, help="seconds a batch waits to fill")
    parser.add_argument("--max_megapixels", type=float, default=defaults.max_megapixels,
                        help="largest image accepted, width x height in millions of pixels")
    parser.add_argument("--max_bytes", type=int, default=defaults.max_bytes, help="largest image file accepted, bytes")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds a request may wait for its answer (then 504)")
    parser.add_argument("--normal_token", default=None, metavar="TOKEN",
                        help="token that POST /normal (adding confirmed-good images to the bank) asks for as "
                             f"'Authorization: Bearer TOKEN'; the environment variable {TOKEN_ENV} does the same and "
                             "stays out of the process list. Neither set: adding is off")
    parser.add_argument("--grown_ckpt", default=None, metavar="PATH",
                        help="where POST /normal writes the grown checkpoint (default: <stem>.grown.ckpt beside "
                             "--ckpt_path); served at start when it was grown from --ckpt_path as it is now")
    parser.add_argument("--log_level", default="warning", choices=("debug", "info", "warning", "error"),
                        help="server log level")
    return parser


def serve_main(argv: List[str]) -> None:
    """``lightning-ad serve ...`` (see ``--help``). Runs until interrupted (Ctrl+C)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not 1024 <= args.port <= 65535:
        parser.error(f"--port {args.port}: use a port from 1024 to 65535")
    if args.devices < 1:
        parser.error(f"--devices {args.devices}: must be at least 1")
    if args.max_batch_size < 1:
        parser.error(f"--max_batch_size {args.max_batch_size}: must be at least 1")
    if not (math.isfinite(args.batch_timeout) and args.batch_timeout >= 0):
        parser.error(f"--batch_timeout {args.batch_timeout}: must be a number of seconds >= 0")
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        parser.error(f"--timeout {args.timeout}: must be a number of seconds > 0")
    try:
        limits = Limits(max_bytes=args.max_bytes, max_megapixels=args.max_megapixels)
    except ValueError as err:
        parser.error(str(err).replace("max_", "--max_"))
    try:
        token = resolve_token(args.normal_token, os.environ)
    except ValueError as err:
        parser.error(str(err))

    from ..errors import LightningADError

    try:
        server = build_server(args.ckpt_path, accelerator=args.accelerator, devices=args.devices,
                              max_batch_size=args.max_batch_size, batch_timeout=args.batch_timeout, limits=limits,
                              timeout=args.timeout, normal_token=token, grown_ckpt=args.grown_ckpt)
    except LightningADError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    shown = f"[{args.host}]" if ":" in args.host else args.host
    adding = "on" if token is not None else "off"
    print(f"lightning-ad serve: http://{shown}:{args.port}/ (page), POST /predict, GET /info, GET /health, "
          f"POST /normal ({adding}) (max_batch_size={args.max_batch_size}, batch_timeout={args.batch_timeout}s)",
          file=sys.stderr, flush=True)
    _stop_on_signals()
    server.run(host=args.host, port=args.port, log_level=args.log_level, generate_client_file=False)


def _stop_on_signals() -> None:
    """SIGTERM (service managers, ``kill``) and SIGINT (Ctrl+C, also when started from a shell that ignores it
    in background jobs) both start LitServe's graceful shutdown."""
    import os
    import signal

    main = os.getpid()

    def interrupt(signum, frame):  # noqa: ARG001
        if os.getpid() != main:  # a forked API server re-raises what uvicorn caught: end quietly
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
