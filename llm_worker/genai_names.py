"""How a model profile's model is named in GenAI telemetry (spans and metrics alike).

LiteLLM spells a model `provider/model`; the GenAI semantic conventions want the provider
as `gen_ai.provider.name` (with their own names for some) and the model alone. A model
name that looks like an address is never shown: telemetry carries no URLs.
"""

from __future__ import annotations

# LiteLLM's provider prefixes whose conventional `gen_ai.provider.name` differs from it.
PROVIDER_NAMES = {
    "azure": "azure.ai.openai",
    "azure_ai": "azure.ai.inference",
    "bedrock": "aws.bedrock",
    "vertex_ai": "gcp.vertex_ai",
    "gemini": "gcp.gemini",
    "mistral": "mistral_ai",
    "xai": "x_ai",
    "watsonx": "ibm.watsonx.ai",
}


def provider_and_model(model: str) -> tuple[str, str]:
    """`anthropic/claude-x` -> (`anthropic`, `claude-x`); no prefix: OpenAI's API; an
    address -> (`unknown`, `redacted`)."""
    if "://" in model:
        return "unknown", "redacted"
    prefix, sep, name = model.partition("/")
    if not sep:
        return "openai", model
    return PROVIDER_NAMES.get(prefix, prefix), name
