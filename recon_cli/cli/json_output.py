"""JSON text for the commands' --json output (no imports beyond the standard library)."""
from __future__ import annotations

import json
import math
from typing import Any


def json_text(data: Any) -> str:
    """JSON with non-finite floats as null (strict JSON parsers reject Infinity/NaN)."""

    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(data), indent=2, default=str, allow_nan=False)
