"""The service callers' bearer token, checked the same way by gRPC and /api.

With ``serving.api_token`` set, every recsys.v1 call carries ``authorization: Bearer
<token>`` (gRPC metadata or HTTP header); without it the call is UNAUTHENTICATED
(HTTP 401). ``serving.app.check_exposure`` refuses to listen beyond loopback without one.
"""

from __future__ import annotations

import hmac


def bearer_ok(header: str | None, token: str) -> bool:
    """Whether an ``authorization`` value carries ``token`` (constant-time compare); True when no token is set."""
    if not token:
        return True
    scheme, _, given = (header or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())
