"""`python -m gateway_runtime.provision`: topics, migrations, OpenFGA store and model, OPA policy.

Every step is idempotent: run it at every start (`make up` does).
- Kafka topics of the namespace; on a broker that asks for credentials, a SCRAM
  principal per mesh service (its credentials file under KAFKA_CREDENTIALS_DIR) and
  exactly the ACLs each needs in the namespace, an older install's broader ones removed
  (gateway_runtime/broker_grants.py);
- Postgres migrations;
- the OpenFGA store named OPENFGA_STORE_NAME, created if missing, and the model of
  `deploy/openfga/model.json` written when it differs from the store's latest one;
- the Rego policies of `deploy/opa/` pushed to the OPA server (live without a restart).
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import httpx

from adapters.opa import upload_policies
from gateway_runtime.broker_admin import BrokerAdmin
from gateway_runtime.broker_grants import MeshGrant, provision_mesh
from gateway_runtime.kafka import KafkaConnection, ensure_topics
from gateway_runtime.logs import configure_logging
from gateway_runtime.postgres import create_pool, migrate
from gateway_runtime.settings import ProvisionSettings
from schemas.topics import Topics

log = logging.getLogger(__name__)
FGA_MODEL = Path(__file__).resolve().parent.parent / "deploy" / "openfga" / "model.json"


def _pruned(value: Any) -> Any:
    """The model without empty fields, so the server's echo compares equal to the file."""
    if isinstance(value, dict):
        pruned = {k: _pruned(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in (None, {}, [], "")}
    if isinstance(value, list):
        return [_pruned(v) for v in value]
    return value


async def ensure_fga_model(
    http: httpx.AsyncClient, api_url: str, store_name: str
) -> tuple[str, str]:
    """(store id, model id): the named store with the model file as its latest model."""
    base = api_url.rstrip("/")
    stores = (await http.get(f"{base}/stores", params={"name": store_name})).raise_for_status()
    found = sorted(stores.json().get("stores") or [], key=lambda s: s["created_at"])
    if found:
        store_id = found[0]["id"]
    else:
        created = await http.post(f"{base}/stores", json={"name": store_name})
        store_id = created.raise_for_status().json()["id"]
        log.info("created openfga store", extra={"fields": {"store": store_name}})
    wanted = json.loads(FGA_MODEL.read_text())
    latest = await http.get(
        f"{base}/stores/{store_id}/authorization-models", params={"page_size": 1}
    )
    models = latest.raise_for_status().json().get("authorization_models") or []
    if models:
        current = {
            k: models[0].get(k) for k in ("schema_version", "type_definitions", "conditions")
        }
        if _pruned(current) == _pruned(wanted):
            return store_id, models[0]["id"]
    written = await http.post(f"{base}/stores/{store_id}/authorization-models", json=wanted)
    model_id = written.raise_for_status().json()["authorization_model_id"]
    log.info("wrote openfga model", extra={"fields": {"store": store_name, "model": model_id}})
    return store_id, model_id


async def provision_kafka(settings: ProvisionSettings) -> tuple[list[str], MeshGrant | None]:
    """The namespace's topics and, on a broker with SASL, its principals and ACLs."""
    kafka = KafkaConnection.from_settings(settings)
    topics = Topics.for_namespace(settings.kafka_namespace).all()
    created = await ensure_topics(kafka, topics)
    if not kafka.sasl:  # a broker from before SASL (local profile only): nothing to grant
        return created, None
    grant = await provision_mesh(
        BrokerAdmin(kafka), settings.kafka_credentials_path, settings.kafka_namespace
    )
    return created, grant


async def provision(settings: ProvisionSettings) -> None:
    created, grant = await provision_kafka(settings)
    pool = await create_pool(settings, max_size=2)
    try:
        applied = await migrate(pool)
    finally:
        await pool.close()
    async with httpx.AsyncClient(timeout=10.0) as http:
        store_id, model_id = await ensure_fga_model(
            http, settings.openfga_api_url, settings.openfga_store_name
        )
        policies = await upload_policies(http, settings.opa_url)
    log.info(
        "provisioned",
        extra={
            "fields": {
                "topics_created": created,
                "kafka_principals_created": grant.principals_created if grant else None,
                "kafka_acls_created": grant.acls_created if grant else None,
                "kafka_acls_removed": grant.acls_removed if grant else None,
                "migrations": applied,
                "openfga_store": store_id,
                "openfga_model": model_id,
                "opa_policies": policies,
            }
        },
    )


if __name__ == "__main__":
    settings = ProvisionSettings()
    configure_logging(settings.service_name, settings.log_level)
    asyncio.run(provision(settings))
