"""Dashboard users: salted scrypt password hashes and API tokens, kept in WEB_USERS_FILE.

The file is JSON, `{"alice": {"password": "scrypt$16384$8$1$<salt>$<hash>", "tokens": ["<sha256>"]}}`,
written with mode 0600 by `chatops web-user`. Only hashes are stored: a password or an API token is
shown once, when it is made. `WEB_USERS` (name:hash,name:hash) adds users without a file.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from agent.config import ConfigError, Settings

from ..identity import is_reserved

# scrypt at n=2**14, r=8, p=1 costs ~16 MiB and tens of milliseconds: slow for a guesser, fine for a login.
SCRYPT_N, SCRYPT_R, SCRYPT_P, DKLEN = 2 ** 14, 8, 1, 32
TOKEN_PREFIX = "cct_"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).decode().rstrip("=")


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=DKLEN)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, stored: str) -> bool:
    """True when `password` matches the stored hash; a malformed hash never matches."""
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        want = _unb64(digest)
        got = hashlib.scrypt(password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=len(want),
                             maxmem=256 * 1024 * 1024)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, want)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_name(name: str) -> str:
    if not NAME_RE.match(name or ""):
        raise ConfigError(f"bad web user name {name!r}: letters, digits, '.', '_' or '-', up to 64 characters")
    if is_reserved(name):
        raise ConfigError(f"bad web user name {name!r}: a reserved name (the bot's own actors cannot log in)")
    return name


@dataclass
class WebUser:
    name: str
    password: str | None = None  # scrypt hash
    tokens: list[str] = field(default_factory=list)  # sha256 of each API token


class UserStore:
    """The users file plus WEB_USERS, re-read when the file changes (a removed user is out at once)."""

    def __init__(self, path: str | Path, inline: str | None = None) -> None:
        self.path = Path(path)
        self.inline = inline or ""
        self._mtime: float | None = None
        self._users: dict[str, WebUser] = {}
        self._from_file: dict[str, WebUser] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> "UserStore":
        return cls(settings.web_users_file, settings.secret("web_users"))

    # --- reading ----------------------------------------------------------------------------

    def _load(self) -> dict[str, WebUser]:
        try:
            mtime = self.path.stat().st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime != self._mtime or not self._users and self.inline:
            self._from_file = self._read_file() if mtime is not None else {}
            self._mtime = mtime
            users = dict(self._from_file)
            for entry in (x.strip() for x in self.inline.split(",")):
                if not entry:
                    continue
                name, sep, pw = entry.partition(":")
                if not sep or not pw.startswith("scrypt$"):
                    raise ConfigError("config error: WEB_USERS entries are name:scrypt$... hashes (make one with "
                                      "`chatops web-user hash`), comma-separated")
                users.setdefault(check_name(name), WebUser(name)).password = pw
            self._users = users
        return self._users

    def _read_file(self) -> dict[str, WebUser]:
        try:
            data = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError) as exc:
            raise ConfigError(f"config error: WEB_USERS_FILE={self.path} is not readable JSON ({exc}); "
                              f"recreate it with `chatops web-user add NAME`") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config error: WEB_USERS_FILE={self.path} must hold a JSON object of users")
        return {str(k): WebUser(str(k), v.get("password"), list(v.get("tokens") or []))
                for k, v in data.items() if isinstance(v, dict)}

    def names(self) -> list[str]:
        return sorted(self._load())

    def any(self) -> bool:
        return bool(self._load())

    def get(self, name: str) -> WebUser | None:
        return self._load().get(name)

    def check_password(self, name: str, password: str) -> bool:
        user = self.get(name)
        if user is None or not user.password:
            verify_password(password, _DUMMY_HASH)  # same cost whether or not the name exists
            return False
        return verify_password(password, user.password)

    def user_for_token(self, token: str) -> str | None:
        if not token.startswith(TOKEN_PREFIX):
            return None
        digest = token_digest(token)
        for user in self._load().values():
            if any(hmac.compare_digest(digest, t) for t in user.tokens):
                return user.name
        return None

    # --- writing (the CLI) ----------------------------------------------------------------------

    def _write(self, users: dict[str, WebUser]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        body = {u.name: {"password": u.password, "tokens": u.tokens} for u in sorted(users.values(), key=lambda u: u.name)}
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(body, f, indent=2)
            f.write("\n")
        os.replace(tmp, self.path)
        self._mtime = None

    def set_password(self, name: str, password: str) -> None:
        check_name(name)
        users = self._read_file() if self.path.exists() else {}
        users.setdefault(name, WebUser(name)).password = hash_password(password)
        self._write(users)

    def new_token(self, name: str) -> str:
        """A new API token for `name` (returned once; only its hash is kept)."""
        users = self._read_file() if self.path.exists() else {}
        if name not in users:
            raise ConfigError(f"no web user {name!r} in {self.path}: `chatops web-user add {name}` first")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        users[name].tokens.append(token_digest(token))
        self._write(users)
        return token

    def remove(self, name: str) -> bool:
        users = self._read_file() if self.path.exists() else {}
        if users.pop(name, None) is None:
            return False
        self._write(users)
        return True


_DUMMY_HASH = hash_password("not a password", salt=b"\0" * 16)
