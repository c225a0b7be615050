from __future__ import annotations

from gateway_runtime.settings import StageSettings


class PersistenceSettings(StageSettings):
    service_name: str = "persistence_worker"
