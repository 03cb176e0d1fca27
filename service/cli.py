"""``ocellus serve``: settings from ``OCELLUS_`` variables, overridden by flags."""

from __future__ import annotations

import argparse
from pathlib import Path


def get_args_parser(prog: str = "ocellus serve") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Serve models over HTTP.")
    p.add_argument("--host", default=None, help="default 127.0.0.1 (OCELLUS_HOST)")
    p.add_argument("--port", type=int, default=None, help="default 8000 (OCELLUS_PORT)")
    p.add_argument("--model", type=Path, action="append", default=None,
                   help="an export directory; repeat for several. Default: the embedded "
                        "default models")
    p.add_argument("--registry", type=Path, default=None,
                   help="serve every name's current version from this model registry, with "
                        "hot reload (OCELLUS_REGISTRY)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None)
    p.add_argument("--log-level", default=None)
    return p


def main(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.logs import configure_logging
    from service.settings import Settings

    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "models": args.model,
                                   "device": args.device, "log_level": args.log_level,
                                   "registry": args.registry}.items()
                 if v is not None}
    settings = Settings(**overrides)
    configure_logging(settings.log_format, settings.log_level)
    app = create_app(settings)
    # uvicorn's loggers go to the service's handler (log_config=None), and the access line
    # is the service's own (service/middleware.py), with the request ID.
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                log_config=None, access_log=False, timeout_graceful_shutdown=30)
    return 0
