"""The one settings source: documented in the README, resolved from defaults,
site.yaml and the environment, with secrets kept out of the repository."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import settings_doc
from pipeline.errors import ContentError, NewsletterError
from pipeline.settings import REQUIRED, SETTINGS, Setting, load_settings

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def table_rows(text: str) -> dict[str, str]:
    """setting name -> its README row, read from the generated part of the README."""
    rows = {}
    for line in settings_doc.current_table(text).splitlines()[2:]:
        name = line.split("|")[1].strip().strip("`")
        rows[name] = line
    return rows


# -- the README table ----------------------------------------------------------------------

def test_every_setting_is_documented_in_the_readme():
    rows = table_rows(README.read_text(encoding="utf-8"))
    missing = [s.name for s in SETTINGS if s.name not in rows]
    assert not missing, f"settings missing from the README table (run `python -m pipeline.settings_doc`): {missing}"
    for s in SETTINGS:
        assert settings_doc._cell(s.help) in rows[s.name], f"{s.name}: help text is stale"
    assert set(rows) == {s.name for s in SETTINGS}, "the README documents settings that no longer exist"


def test_readme_table_is_current():
    text = README.read_text(encoding="utf-8")
    assert settings_doc.with_table(text, settings_doc.render_table()) == text, \
        "README settings table is stale: run `python -m pipeline.settings_doc`"
    assert settings_doc.main(["--check", str(README)]) == 0


def test_a_new_setting_makes_the_table_stale(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README.read_text(encoding="utf-8"), encoding="utf-8")
    more = SETTINGS + (Setting("brand_colour", "#0b5", "Accent colour | used in the email header."),)
    text = readme.read_text(encoding="utf-8")
    assert settings_doc.with_table(text, settings_doc.render_table(more)) != text
    rows = table_rows(settings_doc.with_table(text, settings_doc.render_table(more)))
    assert rows["brand_colour"] == ("| `brand_colour` | `'#0b5'` | `NEWSLETTER_BRAND_COLOUR` | "
                                    "Accent colour \\| used in the email header. |")


def test_regenerating_touches_only_the_table(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nIntro.\n\n<!-- settings-table: generated -->\n\n## After\n\nKept.\n", encoding="utf-8")
    assert settings_doc.main(["--check", str(readme)]) == 1
    assert settings_doc.main([str(readme)]) == 0
    text = readme.read_text(encoding="utf-8")
    assert text.startswith("# Title\n\nIntro.\n\n<!-- settings-table: generated -->\n\n| setting | default |")
    assert text.endswith("\n<!-- /settings-table -->\n\n## After\n\nKept.\n")
    assert len(table_rows(text)) == len(SETTINGS)
    assert settings_doc.main([str(readme)]) == 0 and readme.read_text(encoding="utf-8") == text  # idempotent
    assert settings_doc.main(["--check", str(readme)]) == 0


def test_required_and_secret_settings_are_marked():
    rows = table_rows(settings_doc.with_table("<!-- settings-table -->\n", settings_doc.render_table()))
    assert "| (required) |" in rows["publication_name"]
    assert "| (secret, environment only) | `NEWSLETTER_SECRET`, `NEWSLETTER_SECRET_KEY` |" in rows["secret_key"]


def test_readme_without_a_marker_is_an_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# No marker\n", encoding="utf-8")
    with pytest.raises(NewsletterError, match="no '<!-- settings-table"):
        settings_doc.main([str(readme)])


# -- resolving settings ---------------------------------------------------------------------

def test_defaults_fill_what_site_yaml_leaves_out(content_dir):
    settings = load_settings(content_dir, env={})
    assert settings.publication_name == "Klarity Health Library"  # from site.yaml
    assert settings.feed_items == 20 and settings.transport == "outbox"  # defaults
    assert set(settings) == {s.name for s in SETTINGS}


def test_environment_overrides_site_yaml_and_defaults(content_dir):
    env = {"NEWSLETTER_SEND_TIME": "08:30", "SMTP_PORT": "2525", "NEWSLETTER_SEND_WHEN_NOTHING_DUE": "yes",
           "NEWSLETTER_SMTP_RATE_LIMIT": "12.5", "NEWSLETTER_PUBLICATION_NAME": "Staging Library",
           "NEWSLETTER_REPLY_TO": ""}
    settings = load_settings(content_dir, env=env)
    assert settings.send_time == "08:30"
    assert settings.smtp_port == 2525
    assert settings.send_when_nothing_due is True
    assert settings.smtp_rate_limit == 12.5
    assert settings.publication_name == "Staging Library"
    assert settings.reply_to == ""  # an empty variable does not override


def test_conventional_environment_name_wins(content_dir):
    settings = load_settings(content_dir, env={"DATABASE_URL": "sqlite:///a.db", "NEWSLETTER_DATABASE_URL": "sqlite:///b.db"})
    assert settings.database_url == "sqlite:///a.db"
    assert load_settings(content_dir, env={"NEWSLETTER_DATABASE_URL": "sqlite:///b.db"}).database_url == "sqlite:///b.db"


def test_bad_environment_value_is_a_clear_error(content_dir):
    with pytest.raises(ContentError, match="environment value for smtp_port is not a valid int: 'twenty-five'"):
        load_settings(content_dir, env={"SMTP_PORT": "twenty-five"})


def test_secrets_come_from_the_environment(content_dir):
    settings = load_settings(content_dir, env={"NEWSLETTER_SECRET": "s3cret", "SMTP_PASSWORD": "pw"})
    assert settings.secret_key == "s3cret" and settings.smtp_password == "pw"


@pytest.mark.parametrize("name", [s.name for s in SETTINGS if s.secret])
def test_secret_in_site_yaml_is_refused_with_its_line(content_dir, name):
    site = content_dir / "site.yaml"
    site.write_text(site.read_text(encoding="utf-8") + f"{name}: do-not-commit-me\n", encoding="utf-8")
    line = len(site.read_text(encoding="utf-8").splitlines())
    with pytest.raises(ContentError) as caught:
        load_settings(content_dir, env={})
    assert (caught.value.path, caught.value.line) == (site, line)
    assert caught.value.message.startswith(f"{name} is a secret: set it in the environment")


def test_unknown_key_in_site_yaml_is_reported_with_its_line(content_dir):
    site = content_dir / "site.yaml"
    text = site.read_text(encoding="utf-8").replace("language: en-GB\n", "language: en-GB\nlanguage_code: en\n")
    site.write_text(text, encoding="utf-8")
    with pytest.raises(ContentError) as caught:
        load_settings(content_dir, env={})
    assert str(caught.value) == f"{site}:{text.splitlines().index('language_code: en') + 1}: unknown setting(s): language_code"


@pytest.mark.parametrize("name", [s.name for s in SETTINGS if s.default is REQUIRED])
def test_missing_required_setting(content_dir, name):
    site = content_dir / "site.yaml"
    lines = site.read_text(encoding="utf-8").splitlines(keepends=True)
    start = next(i for i, l in enumerate(lines) if l.startswith(f"{name}:"))
    end = start + 1
    while end < len(lines) and lines[end].startswith("  "):
        end += 1
    site.write_text("".join(lines[:start] + lines[end:]), encoding="utf-8")
    with pytest.raises(ContentError) as caught:
        load_settings(content_dir, env={})
    assert str(caught.value) == f"{site}: missing required setting(s): {name}"
    # the environment can supply it instead
    assert load_settings(content_dir, env={f"NEWSLETTER_{name.upper()}": "from env"})[name] == "from env"


def test_site_yaml_that_is_not_a_mapping(content_dir):
    site = content_dir / "site.yaml"
    site.write_text("- a list\n", encoding="utf-8")
    with pytest.raises(ContentError, match="site settings must be a mapping"):
        load_settings(content_dir, env={})
