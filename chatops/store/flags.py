"""Flags (pause, instance id) and the settings-change log."""

from __future__ import annotations

from typing import Any



from .common import REDACTED, dumps, is_secret_key, iso



class FlagsMixin:
    def set_flag(self, key: str, value: Any, *, actor: str, channel: str, reason: str | None = None) -> None:
        """Set a flag (e.g. `paused`); stored as text; the change is also an event `flag_set`."""
        text = None if value is None else value if isinstance(value, str) else dumps(value)
        with self.write() as conn:
            old = conn.execute("SELECT value FROM flags WHERE key = ?", [key]).fetchone()
            conn.execute("INSERT INTO flags (key, value, updated_at, updated_by) VALUES (?, ?, ?, ?) "
                         "ON CONFLICT(key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at, "
                         "updated_by = excluded.updated_by", [key, text, iso(self._now()), str(actor)])
            self.append_event("flag_set", actor=actor, channel=channel, reason=reason,
                              data={"key": key, "old": old[0] if old else None, "new": text})

    def get_flag(self, key: str, default: str | None = None) -> str | None:
        r = self._row("SELECT value FROM flags WHERE key = ?", [key])
        return default if r is None or r["value"] is None else r["value"]

    def flags(self) -> dict[str, str | None]:
        return {r["key"]: r["value"] for r in self._rows("SELECT key, value FROM flags ORDER BY key")}

    def record_setting_change(self, key: str, old: Any, new: Any, *, actor: str, channel: str,
                              reason: str | None = None) -> int:
        """Append a settings change (values of secret-looking keys are stored as '***'); also an event."""
        def text(v: Any) -> str | None:
            if v is None:
                return None
            if is_secret_key(key) and v != "":
                return REDACTED
            return v if isinstance(v, str) else dumps(v)

        row = {"ts": iso(self._now()), "key": key, "old": text(old), "new": text(new), "actor": str(actor),
               "channel": channel, "reason": reason}
        with self.write() as conn:
            sid = self._insert(conn, "settings_changes", row)
            self.append_event("setting_changed", actor=actor, channel=channel, reason=reason,
                              data={"key": key, "old": row["old"], "new": row["new"], "settings_change_id": sid})
        return sid

    def settings_changes(self, key: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        where, params = ([], []) if key is None else (["key = ?"], [key])
        return self._rows(f"SELECT * FROM settings_changes {self._where(where)} ORDER BY id DESC LIMIT ?",
                          params + [limit])

    # --- questions and answers ------------------------------------------------------------
