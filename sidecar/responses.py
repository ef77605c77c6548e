"""JSON responses of the sidecar, shared by its route modules."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse

__all__ = ["ORJSONResponse"]


class ORJSONResponse(JSONResponse):
    """JSON via orjson: NaN becomes null, numpy values and non-string keys are accepted."""

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)
