from __future__ import annotations

from gateway_runtime.settings import StageSettings


class PolicySettings(StageSettings):
    service_name: str = "policy_worker"
    gateway_require_auth: bool = True
