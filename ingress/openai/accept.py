"""Starting an OpenAI API turn: the session API's admission, answered in OpenAI's shape.

Both OpenAI routes answer with the turn's outcome, not its acceptance, so they cannot sit
under the AcceptDeadline middleware (it would cut their answer); they bound the
acceptance itself with the same TURN_ACCEPT_DEADLINE_S here.
"""

from __future__ import annotations

import asyncio
import time

from ingress.auth.admission import Admission
from ingress.idempotency import KEY_PATTERN
from ingress.openai.errors import OpenAIError
from ingress.resources import Resources
from ingress.turns import Accepted, NewTurn, start_turn


def check_idempotency_key(key: str | None) -> None:
    """400 for an Idempotency-Key the gateway does not accept."""
    if key is not None and not KEY_PATTERN.match(key):
        raise OpenAIError(
            400,
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
            code="invalid_idempotency_key",
        )


async def accept_turn(
    res: Resources, admission: Admission, turn: NewTurn, idempotency_key: str | None
) -> Accepted:
    """Admit and publish within TURN_ACCEPT_DEADLINE_S, as the session API does."""
    due = res.settings.turn_accept_deadline_s
    try:
        async with asyncio.timeout(due):
            return await start_turn(
                res,
                admission,
                turn,
                deadline=time.monotonic() + due,
                idempotency_key=idempotency_key,
            )
    except TimeoutError:
        raise OpenAIError(
            503,
            f"the turn could not be accepted within {due:g}s (Kafka, Postgres or authorization "
            "is not answering); retry with the same Idempotency-Key, which never starts a "
            "turn twice",
            code="accept_timeout",
            headers={"Retry-After": "2"},
        ) from None
