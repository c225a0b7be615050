"""Model profiles: which model serves a role in a deployment mode, and its fallbacks.

Stored in Postgres; the context stage re-reads them within seconds, with no restart.
Profiles serve every tenant, so changing them needs the `operator` scope; reading them
needs `turns`.
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Response
from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from gateway_runtime.ports import StoredProfile
from ingress.deps import OperatorPrincipal, ResourcesDep, TurnsPrincipal

router = APIRouter(prefix="/v1/model-profiles", tags=["model-profiles"])

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
Name = Annotated[str, Path(pattern=NAME)]


class ProfileBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        min_length=1,
        max_length=200,
        description="LiteLLM model name, e.g. "
        "openai/gpt-4o-mini or openai/<name> for an OpenAI-compatible server",
    )
    base_url: HttpUrl | None = None
    api_path: str | None = Field(None, pattern=r"^/[A-Za-z0-9._/-]{0,200}$")
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int = Field(256, ge=1, le=32_768)
    kwargs: dict[str, Any] = Field(default_factory=dict)
    fallbacks: list[Annotated[str, Field(pattern=NAME)]] = Field(
        default_factory=list,
        max_length=5,
        description="roles of the same deployment mode to try, in order, when this one fails",
    )
    cost_per_1k_tokens: float | None = Field(None, ge=0)


class ProfileIn(ProfileBody):
    role: str = Field(pattern=NAME)
    deployment_mode: str = Field(pattern=NAME)


class ProfileOut(ProfileIn):
    pass


def _stored(role: str, mode: str, body: ProfileBody) -> StoredProfile:
    if role in body.fallbacks:
        raise HTTPException(
            422,
            detail={"code": "invalid_request", "message": "a profile cannot fall back to itself"},
        )
    fields = body.model_dump(include=set(ProfileBody.model_fields))
    fields["base_url"] = str(body.base_url).rstrip("/") if body.base_url else None
    return StoredProfile(role=role, deployment_mode=mode, **fields)


def _out(profile: StoredProfile) -> ProfileOut:
    return ProfileOut.model_validate(dataclasses.asdict(profile))


@router.get("", response_model=list[ProfileOut])
async def list_profiles(
    res: ResourcesDep, principal: TurnsPrincipal, deployment_mode: str | None = None
) -> list[ProfileOut]:
    return [_out(p) for p in await res.profiles.list(deployment_mode)]


@router.post("", status_code=201, response_model=ProfileOut)
async def create_profile(
    body: ProfileIn, res: ResourcesDep, principal: OperatorPrincipal
) -> ProfileOut:
    profile = _stored(body.role, body.deployment_mode, body)
    if not await res.profiles.put(profile, create_only=True):
        raise HTTPException(
            409,
            detail={
                "code": "exists",
                "message": f"profile {body.role}/{body.deployment_mode} exists; PUT replaces it",
            },
        )
    return _out(profile)


@router.get("/{role}/{deployment_mode}", response_model=ProfileOut)
async def get_profile(
    role: Name, deployment_mode: Name, res: ResourcesDep, principal: TurnsPrincipal
) -> ProfileOut:
    profile = await res.profiles.get(role, deployment_mode)
    if profile is None:
        raise HTTPException(
            404, detail={"code": "not_found", "message": f"no profile {role}/{deployment_mode}"}
        )
    return _out(profile)


@router.put("/{role}/{deployment_mode}", response_model=ProfileOut)
async def put_profile(
    role: Name,
    deployment_mode: Name,
    body: ProfileBody,
    res: ResourcesDep,
    principal: OperatorPrincipal,
) -> ProfileOut:
    profile = _stored(role, deployment_mode, body)
    await res.profiles.put(profile)
    return _out(profile)


@router.delete("/{role}/{deployment_mode}", status_code=204)
async def delete_profile(
    role: Name, deployment_mode: Name, res: ResourcesDep, principal: OperatorPrincipal
) -> Response:
    if not await res.profiles.delete(role, deployment_mode):
        raise HTTPException(
            404, detail={"code": "not_found", "message": f"no profile {role}/{deployment_mode}"}
        )
    return Response(status_code=204)
