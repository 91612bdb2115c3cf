"""Who is asking: signed-cookie sessions, API bearer tokens, the one-time start token, CSRF, and
a login rate limit.

A session is a cookie signed with itsdangerous (a key made at start: restarting the server logs
everyone out) holding the user name and that session's CSRF token. Every POST from a browser must
carry the CSRF token (form field `csrf` or header `X-CSRF-Token`); a bearer token (scripts) is not
ambient, so it needs none. Acting (approve, reject, cancel, pause, resume, questions) is decided by
the core, on WEB_ALLOWED_USERS, like every other channel: this module only says who the user is.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections import deque
from dataclasses import dataclass

from itsdangerous import BadSignature, URLSafeTimedSerializer

from ..identity import os_user
from .users import UserStore

COOKIE = "chatops_session"


@dataclass(frozen=True)
class Principal:
    user: str
    csrf: str | None  # None for bearer-token requests (no cookie, no CSRF needed)
    via: str  # session | bearer


class LoginLimiter:
    """At most `limit` failed logins per window, per client address and per user name."""

    def __init__(self, limit: int = 5, window_s: float = 300.0, clock=time.monotonic) -> None:
        self.limit, self.window, self.clock = limit, window_s, clock
        self._fails: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float]:
        q = self._fails.setdefault(key, deque())
        cutoff = self.clock() - self.window
        while q and q[0] < cutoff:
            q.popleft()
        return q

    def retry_after(self, *keys: str) -> float:
        """Seconds to wait before another try, 0 when allowed."""
        waits = []
        for k in keys:
            q = self._recent(k)
            if len(q) >= self.limit:
                waits.append(q[0] + self.window - self.clock())
        return max(waits, default=0.0)

    def failed(self, *keys: str) -> None:
        for k in keys:
            self._recent(k).append(self.clock())
        if len(self._fails) > 10_000:  # a spray of names cannot grow memory without bound
            for k in [k for k, q in self._fails.items() if not self._recent(k)]:
                del self._fails[k]

    def succeeded(self, *keys: str) -> None:
        for k in keys:
            self._fails.pop(k, None)


class Auth:
    def __init__(self, users: UserStore, *, max_age_s: float = 12 * 3600, secret_key: str | None = None,
                 limiter: LoginLimiter | None = None) -> None:
        self.users = users
        self.max_age_s = max_age_s
        self.serializer = URLSafeTimedSerializer(secret_key or secrets.token_urlsafe(32), salt="chatops-web-session")
        self.limiter = limiter or LoginLimiter()
        # With no users configured, one random token (printed once at start) logs in as the OS user.
        self.start_token: str | None = None if users.any() else secrets.token_urlsafe(24)

    @property
    def token_user(self) -> str:
        return os_user()

    @property
    def token_active(self) -> bool:
        """The start token works only while no user is configured (adding one retires it)."""
        return self.start_token is not None and not self.users.any()

    # --- sessions -----------------------------------------------------------------------------

    def new_session(self, user: str) -> str:
        return self.serializer.dumps({"u": user, "c": secrets.token_urlsafe(24)})

    def from_cookie(self, cookie: str | None) -> Principal | None:
        if not cookie:
            return None
        try:
            data = self.serializer.loads(cookie, max_age=self.max_age_s)
        except BadSignature:
            return None
        user = data.get("u") if isinstance(data, dict) else None
        if not isinstance(user, str) or not self.user_exists(user):
            return None
        return Principal(user, str(data.get("c") or ""), "session")

    def from_bearer(self, header: str | None) -> Principal | None:
        if not header or not header.lower().startswith("bearer "):
            return None
        token = header[7:].strip()
        user = self.users.user_for_token(token)
        if user is None and self.token_active and hmac.compare_digest(token, self.start_token or ""):
            user = self.token_user
        return Principal(user, None, "bearer") if user else None

    def user_exists(self, user: str) -> bool:
        if self.token_active and user == self.token_user:
            return True
        return self.users.get(user) is not None

    # --- logging in ---------------------------------------------------------------------------

    def check_login(self, name: str, password: str) -> str | None:
        """The user name when the password is right (blocking: scrypt; call off the loop)."""
        return name if name and self.users.check_password(name, password) else None

    def check_start_token(self, token: str) -> str | None:
        if self.token_active and token and hmac.compare_digest(token, self.start_token or ""):
            return self.token_user
        return None


def csrf_ok(principal: Principal, sent: str | None) -> bool:
    if principal.via == "bearer":
        return True
    return bool(principal.csrf) and bool(sent) and hmac.compare_digest(principal.csrf, sent)
