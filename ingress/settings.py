from __future__ import annotations

from gateway_runtime.settings import CommonSettings


class IngressSettings(CommonSettings):
    service_name: str = "ingress"
    gateway_port: int = 8010
    gateway_host: str = "127.0.0.1"
    # Every /v1 route but health needs a principal (API key or JWT) unless this is false;
    # only `make up`'s local profile turns it off.
    gateway_require_auth: bool = True
    max_body_bytes: int = 256 * 1024
    sse_keepalive_s: float = 15.0
    # A client whose queue fills up this far (it reads too slowly) is disconnected; it
    # resumes from the durable log with Last-Event-ID.
    sse_client_queue: int = 1000
    health_timeout_s: float = 2.0
