from __future__ import annotations

from gateway_runtime.settings import CommonSettings
from ingress.auth.settings import AuthSettings


class IngressSettings(CommonSettings, AuthSettings):
    service_name: str = "ingress"
    gateway_port: int = 8010
    gateway_host: str = "127.0.0.1"
    # Every /v1 route but health needs a principal (API key or JWT) unless this is false;
    # only `make up`'s local profile turns it off.
    gateway_require_auth: bool = True
    max_body_bytes: int = 256 * 1024
    sse_keepalive_s: float = 15.0
    # Events queued for one slow client before it is switched to catching up from the
    # durable log (it loses nothing; the queue's memory stays bounded).
    sse_client_queue: int = 1000
    health_timeout_s: float = 2.0
