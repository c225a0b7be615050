"""Model profiles: which model serves a role in a deployment mode, and its fallbacks.

Stored in Postgres; the context stage re-reads them within seconds, with no restart.
Profiles serve every tenant, so changing them needs the `operator` scope; reading them
needs `turns`, and shows a `turns`-only caller the model and its generation settings but
not where it is served, how it is authenticated or what else it is sent (`base_url`,
`api_path`, `api_key_ref`, `kwargs`): those are for `admin` and `operator` keys. No one
ever sees a secret: a profile holds only the name of one.

A profile's `base_url` must pass the egress policy (gateway_runtime/egress.py), or the
write is 422 with `base_url_invalid`, `base_url_forbidden` or `base_url_unresolvable`;
`kwargs` may hold generation arguments only (`kwargs_not_allowed`).
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Response
from pydantic import BaseModel, ConfigDict, Field, HttpUrl

from adapters.profiles import PROVIDER_KWARGS
from gateway_runtime.egress import EgressPolicy
from gateway_runtime.errors import EgressRefused
from gateway_runtime.ports import StoredProfile
from ingress.deps import OperatorPrincipal, Principal, ResourcesDep, TurnsPrincipal
from ingress.openapi_responses import errors

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
    base_url: HttpUrl | None = Field(
        None, description="a public http(s) address, or one MODEL_EGRESS_ALLOW lists"
    )
    api_path: str | None = Field(None, pattern=r"^/[A-Za-z0-9._/-]{0,200}$")
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int = Field(256, ge=1, le=32_768)
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="generation arguments: " + ", ".join(sorted(PROVIDER_KWARGS)),
    )
    fallbacks: list[Annotated[str, Field(pattern=NAME)]] = Field(
        default_factory=list,
        max_length=5,
        description="roles of the same deployment mode to try, in order, when this one fails",
    )
    cost_per_1k_tokens: float | None = Field(None, ge=0)
    api_key_ref: str | None = Field(
        None,
        pattern=NAME,
        description="the name of the provider secret the calls carry (MODEL_API_KEYS or "
        "$SOMA_HOME/secrets/<ref> of the LLM stage; `default` is LLM_API_KEY); none: no key",
    )


class ProfileIn(ProfileBody):
    role: str = Field(pattern=NAME)
    deployment_mode: str = Field(pattern=NAME)


class ProfileSummary(BaseModel):
    """What a `turns` key sees of a profile."""

    model_config = ConfigDict(extra="forbid")

    role: str
    deployment_mode: str
    model: str
    temperature: float
    max_tokens: int
    fallbacks: list[str]
    cost_per_1k_tokens: float | None


class ProfileOut(ProfileSummary):
    """What `admin` and `operator` keys see: also where and how the model is called."""

    base_url: str | None
    api_path: str | None
    kwargs: dict[str, Any]
    api_key_ref: str | None


ProfileView = ProfileOut | ProfileSummary
WRITE = errors(
    422,
    s422="an invalid body, or one the gateway refuses: `kwargs_not_allowed`, "
    "`base_url_invalid`, `base_url_forbidden`, `base_url_unresolvable`, a fallback to itself",
)
NOT_FOUND = errors(404, s404="no such profile (`not_found`)")


def _invalid(code: str, message: str) -> HTTPException:
    return HTTPException(422, detail={"code": code, "message": message})


@lru_cache(maxsize=4)
def _policy(allow: tuple[str, ...]) -> EgressPolicy:
    return EgressPolicy(allow)


async def _stored(res: ResourcesDep, role: str, mode: str, body: ProfileBody) -> StoredProfile:
    if role in body.fallbacks:
        raise _invalid("invalid_request", "a profile cannot fall back to itself")
    unknown = sorted(set(body.kwargs) - PROVIDER_KWARGS)
    if unknown:
        raise _invalid(
            "kwargs_not_allowed",
            f"kwargs may hold generation arguments only, not {', '.join(unknown)}",
        )
    fields = body.model_dump(include=set(ProfileBody.model_fields))
    fields["base_url"] = str(body.base_url).rstrip("/") if body.base_url else None
    if fields["base_url"]:
        try:
            await _policy(tuple(res.settings.egress_allow)).check_url(fields["base_url"])
        except EgressRefused as exc:
            raise _invalid(exc.code, str(exc)) from exc
    return StoredProfile(role=role, deployment_mode=mode, **fields)


def _view(profile: StoredProfile, principal: Principal) -> ProfileView:
    values = dataclasses.asdict(profile)
    if principal.has("admin") or principal.has("operator"):
        return ProfileOut.model_validate(values)
    return ProfileSummary.model_validate({k: values[k] for k in ProfileSummary.model_fields})


@router.get("", response_model=list[ProfileView])
async def list_profiles(
    res: ResourcesDep, principal: TurnsPrincipal, deployment_mode: str | None = None
) -> list[ProfileView]:
    return [_view(p, principal) for p in await res.profiles.list(deployment_mode)]


@router.post(
    "",
    status_code=201,
    response_model=ProfileOut,
    responses={**WRITE, **errors(409, s409="the profile exists (`exists`); PUT replaces it")},
)
async def create_profile(
    body: ProfileIn, res: ResourcesDep, principal: OperatorPrincipal
) -> ProfileView:
    profile = await _stored(res, body.role, body.deployment_mode, body)
    if not await res.profiles.put(profile, create_only=True):
        raise HTTPException(
            409,
            detail={
                "code": "exists",
                "message": f"profile {body.role}/{body.deployment_mode} exists; PUT replaces it",
            },
        )
    return _view(profile, principal)


@router.get("/{role}/{deployment_mode}", response_model=ProfileView, responses=NOT_FOUND)
async def get_profile(
    role: Name, deployment_mode: Name, res: ResourcesDep, principal: TurnsPrincipal
) -> ProfileView:
    profile = await res.profiles.get(role, deployment_mode)
    if profile is None:
        raise HTTPException(
            404, detail={"code": "not_found", "message": f"no profile {role}/{deployment_mode}"}
        )
    return _view(profile, principal)


@router.put("/{role}/{deployment_mode}", response_model=ProfileOut, responses=WRITE)
async def put_profile(
    role: Name,
    deployment_mode: Name,
    body: ProfileBody,
    res: ResourcesDep,
    principal: OperatorPrincipal,
) -> ProfileView:
    profile = await _stored(res, role, deployment_mode, body)
    await res.profiles.put(profile)
    return _view(profile, principal)


@router.delete("/{role}/{deployment_mode}", status_code=204, responses=NOT_FOUND)
async def delete_profile(
    role: Name, deployment_mode: Name, res: ResourcesDep, principal: OperatorPrincipal
) -> Response:
    if not await res.profiles.delete(role, deployment_mode):
        raise HTTPException(
            404, detail={"code": "not_found", "message": f"no profile {role}/{deployment_mode}"}
        )
    return Response(status_code=204)
