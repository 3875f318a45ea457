"""schemathesis hooks of ``test_contract.py`` (its ``schemathesis.toml`` names this module).

One check replaces ``positive_data_acceptance``: the same, except that a reused
Idempotency-Key is not a refusal of valid data. A key names one order; sent again with
another body it gets 422 ``idempotency_key_reused`` (the answer the IETF Idempotency-Key
draft asks for), because of what the key did before, as ``409 sold_out`` is because of the
stock: the request itself is valid. Every other refusal of valid data still fails.
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis
from schemathesis.specs.openapi.checks import positive_data_acceptance

KEY_REUSED = "idempotency_key_reused"


def _error_code(content: bytes) -> Any:
    try:
        return json.loads(content).get("error")
    except (ValueError, AttributeError):
        return None


@schemathesis.check
def positive_data_acceptance_beside_key_reuse(ctx: Any, response: Any, case: Any) -> bool | None:
    """``positive_data_acceptance``, a reused Idempotency-Key's 422 aside."""
    if response.status_code == 422 and _error_code(response.content) == KEY_REUSED:
        return None
    return positive_data_acceptance(ctx, response, case)  # type: ignore[no-any-return]
