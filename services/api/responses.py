"""The api's default response class: JSON rendered by orjson.

FastAPI deprecated its own ``ORJSONResponse`` in favour of pydantic serialisation of
response models, but the hot paths here return ready dicts without a model pass (the item
read path must stay close to a constant endpoint's speed), so orjson renders them.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse


class OrjsonResponse(JSONResponse):
    """``application/json`` rendered by ``orjson.dumps``."""

    def render(self, content: Any) -> bytes:
        """Serialise ``content`` (dicts, lists, pydantic-free plain data)."""
        return orjson.dumps(content)
