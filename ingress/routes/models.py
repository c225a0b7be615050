"""`GET /v1/models` and `GET /v1/models/{id}`: the OpenAI API's view of the model profiles.

Each role of the deployment mode the caller's tenant may use is a model whose id is the
role (ingress/openai/models.py); `retrieve` also answers for a model string a profile
serves, under the id asked for, since that is what a chat completion accepts too.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from ingress.deps import ResourcesDep, TurnsPrincipal
from ingress.openai.models import match, model_not_found, model_object, usable_roles
from ingress.openapi_responses import errors

router = APIRouter(prefix="/v1/models", tags=["openai"])


@router.get("")
async def list_models(res: ResourcesDep, principal: TurnsPrincipal) -> dict[str, Any]:
    """The models (profile roles) the caller may use, in OpenAI's list shape."""
    roles = await usable_roles(res, principal)
    return {"object": "list", "data": [model_object(r.role) for r in roles]}


# `{model_id:path}`: ids like `openai/qwen2.5-0.5b-instruct` hold a slash.
@router.get(
    "/{model_id:path}",
    responses=errors(404, openai=True, s404="no such model you may use (`model_not_found`)"),
)
async def retrieve_model(
    model_id: str, res: ResourcesDep, principal: TurnsPrincipal
) -> dict[str, Any]:
    """One model, or 404 `model_not_found` (also for one the caller may not use)."""
    if match(await usable_roles(res, principal), model_id) is None:
        raise model_not_found(model_id)
    return model_object(model_id)
