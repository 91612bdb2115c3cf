"""Configuration is documented in full: .env.example and the README's table are generated from
the settings, and fail here when a setting is added without a line in agent/settings_doc.py."""

from __future__ import annotations

import re
from pathlib import Path

from agent import settings_doc
from agent.config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_has_a_group_and_a_meaning():
    assert settings_doc.missing() == [], ("settings with no line in agent/settings_doc.py GROUPS: "
                                          f"{settings_doc.missing()}")
    assert settings_doc.unknown() == [], f"agent/settings_doc.py documents settings that do not exist: {settings_doc.unknown()}"
    for name, (group, meaning, _) in settings_doc.documented().items():
        assert group and len(meaning) > 10 and "\n" not in meaning, name


def test_env_example_is_the_generated_one():
    text = (ROOT / ".env.example").read_text()
    assert text == settings_doc.env_example(), "regenerate it: chatops config example > .env.example"
    for name in Settings.model_fields:
        assert re.search(rf"^# {name.upper()}=", text, re.M), f"{name.upper()} missing from .env.example"


def test_env_example_defaults_are_the_real_defaults(tmp_path):
    # Uncommenting every line of .env.example changes nothing: each default shown is the default.
    lines = [ln[2:] for ln in settings_doc.env_example().splitlines() if re.match(r"^# [A-Z_]+=\S", ln)]
    env = tmp_path / ".env"
    env.write_text("\n".join(lines) + "\n")
    assert load_settings(env_file=env).redacted() == load_settings(env_file=None).redacted()
    assert len(lines) > 40


def test_readme_settings_table_is_the_generated_one():
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- settings:start -->\n(.*?)<!-- settings:end -->", readme, re.S)
    assert m, "README.md has no <!-- settings:start --> ... <!-- settings:end --> block"
    assert m.group(1) == settings_doc.markdown_table(), "regenerate it: python -m agent.settings_doc --markdown"
