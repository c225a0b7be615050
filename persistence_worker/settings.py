from __future__ import annotations

from gateway_runtime.settings import MemorySettings, StageSettings


class PersistenceSettings(StageSettings, MemorySettings):
    service_name: str = "persistence_worker"
