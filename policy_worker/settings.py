from __future__ import annotations

from gateway_runtime.authz import OpenFgaSettings
from gateway_runtime.opa import OpaSettings
from gateway_runtime.settings import StageSettings


class PolicySettings(StageSettings, OpenFgaSettings, OpaSettings):
    service_name: str = "policy_worker"
    gateway_require_auth: bool = True
