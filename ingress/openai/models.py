"""What an OpenAI `model` means here: a model profile role of the deployment mode.

A client written for OpenAI sends `model` and nothing else about routing. The gateway's
routing unit is the profile role (`dialogue`, `summary`, ...), which carries the model,
its fallbacks and its breaker; so `model` names a role of the ingress's DEPLOYMENT_MODE,
or the model string a profile of that mode serves (`openai/qwen2.5-0.5b-instruct`, or
without the provider prefix, `qwen2.5-0.5b-instruct`), which resolves to that profile's
role. The turn then carries `metadata["model_role"]`, so the policy, context and LLM
stages route it exactly as a session API turn of that role: fallbacks and breaker apply.

A role is usable by a principal when its tenant may use at least one of the role's
profile and fallbacks (what the context stage would pick); a role it may not use is
`model_not_found`, as OpenAI answers for a model the caller has no access to, so the
list does not leak the roles of models another tenant pays for.

The default role (`dialogue`) always exists: the context stage runs a turn on the
default profile (from its settings) when the mode has none stored yet.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway_runtime.ports import DEFAULT_ROLE, StoredProfile, Tenant
from ingress.auth.principal import Principal
from ingress.openai.errors import OpenAIError
from ingress.resources import Resources

OWNED_BY = "soma-gateway"
# A fixed `created` (OpenAI's is when the model was published; profiles are edited in
# place, so no moment of theirs is more truthful, and a fixed one keeps the list stable).
CREATED = 1_735_689_600  # 2025-01-01T00:00:00Z


@dataclass(frozen=True, slots=True)
class RoleModels:
    """A role of the mode: its profile (None: the default role, not stored yet) and the
    models it may run on (its own, then its fallbacks')."""

    role: str
    profile: StoredProfile | None
    models: tuple[str, ...]

    def usable_by(self, tenant: Tenant) -> bool:
        if self.profile is None:
            return True  # the default profile: the context stage's own settings decide
        return any(tenant.model_allowed(m) for m in self.models)


def roles_of(profiles: list[StoredProfile]) -> list[RoleModels]:
    """Every role of the profiles (one deployment mode), sorted, the default role first."""
    by_role = {p.role: p for p in profiles}
    roles = []
    for profile in profiles:
        fallbacks = [by_role[f].model for f in profile.fallbacks if f in by_role]
        roles.append(RoleModels(profile.role, profile, (profile.model, *fallbacks)))
    if DEFAULT_ROLE not in by_role:
        roles.append(RoleModels(DEFAULT_ROLE, None, ()))
    return sorted(roles, key=lambda r: (r.role != DEFAULT_ROLE, r.role))


def _bare(model: str) -> str:
    """`openai/qwen2.5` -> `qwen2.5`: the name without its LiteLLM provider prefix."""
    return model.partition("/")[2] or model


def match(roles: list[RoleModels], model: str) -> RoleModels | None:
    """The role `model` names: a role, else the role whose profile serves that model
    (exact, then without the provider prefix), the default role first among several."""
    for role in roles:
        if role.role == model:
            return role
    for same in (lambda p: p.model == model, lambda p: _bare(p.model) == model):
        for role in roles:
            if role.profile is not None and same(role.profile):
                return role
    return None


def model_not_found(model: str) -> OpenAIError:
    return OpenAIError(
        404,
        f"The model `{model}` does not exist or you do not have access to it.",
        code="model_not_found",
        param="model",
    )


async def usable_roles(res: Resources, principal: Principal) -> list[RoleModels]:
    """The roles of the mode the principal's tenant may use."""
    tenant = res.auth.tenants.get(principal.tenant)
    roles = roles_of(await res.profiles.list(res.settings.deployment_mode))
    return [r for r in roles if r.usable_by(tenant)]


async def resolve_role(res: Resources, principal: Principal, model: str) -> str:
    """The role a request's `model` runs on; `model_not_found` (404) otherwise."""
    found = match(await usable_roles(res, principal), model)
    if found is None:
        raise model_not_found(model)
    return found.role


def model_object(model_id: str) -> dict[str, object]:
    return {"id": model_id, "object": "model", "created": CREATED, "owned_by": OWNED_BY}
