"""`python -m ingress`: serve the API with uvicorn."""

from __future__ import annotations

import sys

import uvicorn
from pydantic import ValidationError

from gateway_runtime import tracing
from gateway_runtime.logs import configure_logging
from gateway_runtime.settings import IngressSettings
from ingress.app import create_app


def main() -> None:
    try:
        settings = IngressSettings()
    except ValidationError as exc:
        # A refused configuration (auth off on a non-loopback address, JWT without an
        # audience, ...) is a start-up error a person reads, not a traceback.
        problems = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        sys.exit(f"ingress: refusing to start: {problems}")
    configure_logging(settings.service_name, settings.log_level)
    tracing.configure(settings)  # off unless the OTEL_* settings turn it on
    try:
        _serve(settings)
    finally:
        tracing.shutdown()  # the last spans are exported before the process ends


def _serve(settings: IngressSettings) -> None:
    uvicorn.run(
        create_app(settings),
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        # Refused while reading (close 1009), before a large frame is buffered whole.
        ws_max_size=settings.ws_max_frame_bytes,
    )


if __name__ == "__main__":
    main()
