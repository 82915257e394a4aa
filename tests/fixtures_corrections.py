"""Helpers for the corrections tests: a private world (content copy, SQLite file, public/)
and the real ``newsletter`` command run as a process in it."""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NEWSLETTER = ROOT / ".venv" / "bin" / "newsletter"
SECRET = "corrections-test-secret"


@dataclass
class World:
    content: Path
    public: Path
    db_url: str
    cwd: Path
    env: dict = field(default_factory=dict)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run([str(NEWSLETTER), "--content", str(self.content), *args], cwd=self.cwd, env=self.env,
                              capture_output=True, text=True, timeout=120)
        assert "Traceback" not in proc.stderr, proc.stderr
        if check:
            assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        return proc

    def fails(self, *args: str) -> str:
        """The one line a refused command prints, after asserting it exits non-zero (a real process)."""
        proc = self.run(*args, check=False)
        assert proc.returncode != 0, (args, proc.stdout)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, proc.stderr
        return lines[0]

    def invoke(self, *args: str):
        """The command in this process (click's runner): cheaper than a process for many cases."""
        from click.testing import CliRunner
        from pipeline.cli import cli

        return CliRunner().invoke(cli, ["--content", str(self.content), *args], env=self.env, catch_exceptions=True)

    def refused(self, *args: str) -> str:
        """In process: the command raised the one-line error ``newsletter`` prints with exit 1."""
        from pipeline.errors import NewsletterError

        result = self.invoke(*args)
        assert isinstance(result.exception, NewsletterError), (args, result.output, result.exception)
        assert "\n" not in str(result.exception)
        return str(result.exception)

    def settings(self):
        from pipeline.settings import load_settings
        return load_settings(self.content, env={k: v for k, v in self.env.items() if k.startswith(("NEWSLETTER_",
                                                                                                    "SMTP_"))}
                             | {"DATABASE_URL": self.db_url})

    def library(self):
        from pipeline.content.library import load_library
        return load_library(self.content, self.settings())

    def engine(self):
        from pipeline.database import open_database
        return open_database(self.db_url)

    def edit(self, slug: str, old: str, new: str) -> None:
        path = self.content / "articles" / f"{slug}.md"
        text = path.read_text(encoding="utf-8")
        assert old in text
        path.write_text(text.replace(old, new, 1), encoding="utf-8")

    def smtp(self, port: int, **more: str) -> None:
        self.env.update({"NEWSLETTER_TRANSPORT": "smtp", "SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(port),
                         "NEWSLETTER_SMTP_TIMEOUT": "10", **more})


@pytest.fixture
def world(content_dir: Path, tmp_path: Path) -> World:
    public = tmp_path / "public"
    db_url = f"sqlite:///{tmp_path / 'newsletter.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEWSLETTER_", "SMTP_", "DATABASE_URL"))}
    env |= {"DATABASE_URL": db_url, "NEWSLETTER_SECRET": SECRET, "NEWSLETTER_PUBLIC_DIR": str(public),
            "NEWSLETTER_TRANSPORT": "outbox", "NEWSLETTER_OUTBOX_DIR": str(tmp_path / "outbox")}
    w = World(content_dir, public, db_url, tmp_path, env)
    w.engine()  # the database exists, so builds record the versions that went out
    return w


def send_issue_of(world: World, slugs: tuple[str, ...], on: date = date(2026, 3, 2), *, settings=None):
    """Send a real daily issue holding ``slugs`` (compose, render, ledger, transport), in process."""
    from pipeline.corrections.records import ISSUE, remember
    from pipeline.delivery.deliver import send_issue
    from pipeline.rendering.compose import compose_issue
    from pipeline.rendering.render import render_issue
    from pipeline.site.pages import publish_issue

    library = world.library()
    settings = settings or library.settings
    issue = compose_issue(library, on, number=1, scheduled=list(slugs))
    rendered = render_issue(issue, settings)
    publish_issue(rendered, world.public, settings=world.settings())
    remember(world.engine(), issue.articles, ISSUE)  # as `newsletter send` and the daemon do
    return send_issue(world.engine(), settings, rendered, progress=False), rendered
