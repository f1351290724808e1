"""What the HTTP routes share about requests: the infer path, a URL's version, the routing key's bound."""

from __future__ import annotations

import re

from service.contract import parse_version
from service.errors import InvalidInput

#: ``/v2/models/{m}[/versions/{v}]/infer``: the model in group 1, the version (or None) in group 2.
INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
#: Longest ``X-Routing-Key`` honoured (a longer one is cut: it only picks a rollout's version).
MAX_ROUTING_KEY = 256


def url_version(version: str | None) -> int | None:
    """The version named in a URL (None: newest); 400 unless it is a canonical positive integer."""
    if version is None:
        return None
    parsed = parse_version(version)
    if parsed is None:
        raise InvalidInput(f"model version must be a positive integer, got '{version[:32]}'")
    return parsed
