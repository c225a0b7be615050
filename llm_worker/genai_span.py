"""The LLM stage's model call as an OpenTelemetry GenAI inference span.

Named `chat <model>`, kind CLIENT, with the `gen_ai.*` attributes of the GenAI semantic
conventions (inference span): the provider, the requested and the answering model, the
generation parameters, the token usage and the finish reason. One span covers the whole
logical call, its retries and fallbacks included (as the conventions ask), so a fallback
shows as a response model other than the requested one (`soma.fallback`). The
deployment's URL is left out, as from metrics and errors: it may name internal hosts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.util.types import AttributeValue

from gateway_runtime import tracing
from gateway_runtime.errors import ProviderError
from llm_worker.genai_names import provider_and_model
from schemas.events import ModelProfile, ToolCall, Usage


class AnswerSoFar(Protocol):
    """What the handler knows of the answer when the call ends (llm_worker.handler)."""

    model: str
    fallback: bool
    usage: Usage | None
    calls: tuple[ToolCall, ...]
    finish: str | None


@contextlib.contextmanager
def chat_span(profile: ModelProfile, conversation_id: str, answer: AnswerSoFar) -> Iterator[None]:
    """Around the call of `profile` (and its fallbacks); reads `answer` when it ends."""
    tracer = tracing.tracer()
    if tracer is None:
        yield
        return
    provider, model = provider_and_model(profile.model)
    attributes: dict[str, AttributeValue] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider,
        "gen_ai.system": provider,  # the name before gen_ai.provider.name, still read widely
        "gen_ai.request.model": model,
        "gen_ai.request.max_tokens": profile.max_tokens,
        "gen_ai.request.temperature": profile.temperature,
        "gen_ai.request.stream": True,
        "gen_ai.output.type": "text",
        "gen_ai.conversation.id": conversation_id,
        "soma.model_role": profile.role,
    }
    with tracer.start_as_current_span(
        f"chat {model}",
        kind=SpanKind.CLIENT,
        attributes=attributes,
        # Not the exception's text: a provider's may name its URL (ProviderError.public).
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            yield
        except BaseException as exc:
            if isinstance(exc, ProviderError):
                span.set_attribute("error.type", str(exc.status or type(exc).__name__))
                span.set_status(Status(StatusCode.ERROR, exc.public[:200]))
            else:  # a cancelled turn, a bug
                span.set_attribute("error.type", type(exc).__name__)
                span.set_status(Status(StatusCode.ERROR))
            raise
        finally:
            span.set_attribute("gen_ai.response.model", provider_and_model(answer.model)[1])
            span.set_attribute("soma.fallback", answer.fallback)
            if answer.usage is not None:
                span.set_attribute("gen_ai.usage.input_tokens", answer.usage.prompt_tokens)
                span.set_attribute("gen_ai.usage.output_tokens", answer.usage.completion_tokens)
            finish = answer.finish or ("tool_calls" if answer.calls else None)
            if finish is not None:
                span.set_attribute("gen_ai.response.finish_reasons", [finish])
