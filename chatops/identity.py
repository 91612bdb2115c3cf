"""Who is who: channel identities, persons, roles and reserved names.

Every entry point turns its user into an identity `channel:id` (`console:alice`, `telegram:42`,
`slack:U042`, `web:alice`; the CLI shares the console's namespace, both are the OS account), then
into a person:

- with `PEOPLE_FILE` (TOML), each person lists their identity per channel and a role:

      [people.alice]
      role = "approver"          # or "viewer"
      telegram = 42
      slack = "U042"
      console = "alice"          # also the CLI
      web = "alice"

  and counts once whatever channel they vote from;
- an id on a channel's allowlist (TELEGRAM_ALLOWED_USER_IDS, ...) that no person claims is a
  person of its own, namespaced (`telegram:42` and `console:42` are two people), role approver.

Roles: any known person may read and pause (a kill switch should be easy to pull); only approvers
may approve, reject, cancel, resume or change settings.

Reserved names (`auto`, `agent`, `executor`, `system`, ...) are the bot's own actors in the audit
log. None may be on an allowlist or in the people file (start-up refuses), and none may act
through any channel; only the unattended mode's own path votes as `auto`.

The terminal and CLI user is the OS account of the process's real uid (`pwd`), never LOGNAME or
USER: an environment variable is not an identity.
"""

from __future__ import annotations

import os
import pwd
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from agent.config import ConfigError, Settings

CHANNELS = ("console", "telegram", "slack", "web")
# A channel name as used in events and votes -> the namespace of its identities.
NAMESPACE = {"console": "console", "cli": "console", "terminal": "console", "telegram": "telegram",
             "slack": "slack", "web": "web"}
RESERVED = frozenset({"auto", "agent", "executor", "system", "scheduler", "bot", "store", "all", "unknown",
                      "anonymous"})
ROLES = ("approver", "viewer")
AUTO_PERSON = "auto"

# What each action needs: "member" (any known person) or "approver".
ACTION_ROLE = {"read": "member", "pause": "member", "approve": "approver", "reject": "approver",
               "cancel": "approver", "resume": "approver", "settings": "approver"}

_NAME_RE = re.compile(r"[A-Za-z0-9_.@+-]{1,64}\Z")


def os_user() -> str:
    """The account name of this process's real uid (not LOGNAME/USER, which anyone can set)."""
    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:  # a uid with no passwd entry (some containers): the number is still unforgeable
        return f"uid{uid}"


def is_reserved(user: str) -> bool:
    return str(user).strip().lower() in RESERVED


def identity(channel: str, user: str) -> str:
    """`channel:id`, with the CLI and terminal in the console namespace."""
    return f"{NAMESPACE.get(channel, channel)}:{user}"


@dataclass(frozen=True)
class Person:
    key: str  # the person's name from PEOPLE_FILE, or the identity itself (`telegram:42`)
    role: str  # approver | viewer
    identities: frozenset[str]

    @property
    def approver(self) -> bool:
        return self.role == "approver"


@dataclass(frozen=True)
class Decision:
    """What the directory says about one user doing one thing on one channel."""

    allowed: bool
    person: Person | None
    identity: str
    reason: str  # why not, one line (empty when allowed)


class Directory:
    """The persons the bot knows, by identity."""

    def __init__(self, people: Iterable[Person] = (), allowlists: Mapping[str, Iterable[str]] | None = None) -> None:
        self._by_identity: dict[str, Person] = {}
        for p in people:
            for ident in p.identities:
                if ident in self._by_identity:
                    raise ConfigError(f"config error: PEOPLE_FILE names {ident} for both {self._by_identity[ident].key} "
                                      f"and {p.key}: an identity belongs to one person")
                self._by_identity[ident] = p
        for channel, users in (allowlists or {}).items():
            for u in users:
                u = str(u).strip()
                if not u:
                    continue
                if is_reserved(u):
                    raise ConfigError(f"config error: {_ALLOW_ENV.get(channel, channel)} lists {u!r}, a reserved name "
                                      f"(the bot's own actors: {', '.join(sorted(RESERVED))}); remove it")
                ident = identity(channel, u)
                self._by_identity.setdefault(ident, Person(ident, "approver", frozenset({ident})))

    def person(self, channel: str, user: str) -> Person | None:
        if is_reserved(user):
            return None
        return self._by_identity.get(identity(channel, str(user)))

    def check(self, channel: str, user: str, action: str) -> Decision:
        """May `user` on `channel` do `action` (see ACTION_ROLE)?"""
        user = str(user)
        ident = identity(channel, user)
        if is_reserved(user):
            return Decision(False, None, ident, f"{user!r} is a reserved name: it cannot act through a channel")
        p = self._by_identity.get(ident)
        if p is None:
            return Decision(False, None, ident, f"{ident} is not on the allowlist")
        need = ACTION_ROLE.get(action, "approver")
        if need == "approver" and not p.approver:
            return Decision(False, p, ident, f"{p.key} is a {p.role}: only approvers may {action}")
        return Decision(True, p, ident, "")

    def has_anyone(self, channel: str) -> bool:
        ns = NAMESPACE.get(channel, channel)
        return any(i.startswith(ns + ":") for i in self._by_identity)

    def approvers(self) -> set[str]:
        return {p.key for p in self._by_identity.values() if p.approver}


_ALLOW_ENV = {"console": "CONSOLE_ALLOWED_USERS", "cli": "CONSOLE_ALLOWED_USERS", "telegram": "TELEGRAM_ALLOWED_USER_IDS",
              "slack": "SLACK_ALLOWED_USER_IDS", "web": "WEB_ALLOWED_USERS"}


def load_people(path: str | Path) -> list[Person]:
    """Persons from a PEOPLE_FILE; a bad file is a one-line ConfigError."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config error: PEOPLE_FILE={str(p)!r} is not allowed: no such file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config error: PEOPLE_FILE={str(p)!r} is not allowed: {str(exc).splitlines()[0]}") from None
    people = data.get("people")
    if not isinstance(people, dict) or not people:
        raise ConfigError(f"config error: PEOPLE_FILE={str(p)!r} is not allowed: it needs [people.NAME] tables "
                          f"(role = \"approver\", telegram = 42, slack = \"U042\", console = \"alice\")")
    out = []
    for name, entry in people.items():
        where = f"PEOPLE_FILE {str(p)!r}, person {name!r}"
        if not _NAME_RE.match(name) or is_reserved(name):
            raise ConfigError(f"config error: {where}: a name is letters, digits and ._@+- and not a reserved name")
        if not isinstance(entry, dict):
            raise ConfigError(f"config error: {where}: expected a table")
        role = str(entry.get("role", "approver")).lower()
        if role not in ROLES:
            raise ConfigError(f"config error: {where}: role {role!r} is not allowed (approver or viewer)")
        idents = set()
        for key, value in entry.items():
            if key == "role":
                continue
            if key not in NAMESPACE:
                raise ConfigError(f"config error: {where}: unknown key {key!r} (role, {', '.join(CHANNELS)})")
            for v in value if isinstance(value, list) else [value]:
                v = str(v).strip()
                if not v or is_reserved(v):
                    raise ConfigError(f"config error: {where}: {key} = {v!r} is empty or a reserved name")
                if NAMESPACE[key] == "telegram" and not v.lstrip("-").isdigit():
                    raise ConfigError(f"config error: {where}: telegram = {v!r}: Telegram user ids are numbers")
                idents.add(identity(key, v))
        if not idents:
            raise ConfigError(f"config error: {where}: no identity (telegram, slack, console or web)")
        out.append(Person(name, role, frozenset(idents)))
    return out


def directory_for(settings: Settings) -> Directory:
    """The directory of a bot or CLI process: PEOPLE_FILE (if set) plus the channel allowlists."""
    people = load_people(settings.people_file) if settings.people_file else []
    return Directory(people, {
        # The default terminal user (no CONSOLE_ALLOWED_USERS) is the OS account, unless reserved.
        "console": settings.console_allowed_users or tuple(u for u in (os_user(),) if not is_reserved(u)),
        "telegram": settings.telegram_allowed_user_ids,
        "slack": settings.slack_allowed_user_ids,
        "web": getattr(settings, "web_allowed_users", ()) or (),
    })
