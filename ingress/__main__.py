"""`python -m ingress`: serve the API with uvicorn."""

from __future__ import annotations

import uvicorn

from gateway_runtime.logs import configure_logging
from gateway_runtime.settings import IngressSettings
from ingress.app import create_app


def main() -> None:
    settings = IngressSettings()
    configure_logging(settings.service_name, settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.gateway_host,
        port=settings.gateway_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )


if __name__ == "__main__":
    main()
