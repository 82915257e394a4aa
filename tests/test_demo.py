"""`make demo` on a fresh copy of the repository: content checked, the demo subscriber
added, the day's issue in the outbox, the archive and feeds in public/, and the
script says where to look.  Run twice: the second run sends nothing again."""
from __future__ import annotations

import json
import mailbox
import os
import shutil
import subprocess
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from lxml import etree

from conftest import missing

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fresh_copy(tmp_path: Path) -> Path:
    """What a fresh clone has (content, scripts), using this checkout's virtualenv."""
    copy = tmp_path / "repo"
    copy.mkdir()
    shutil.copytree(Path(__file__).parent / "fixtures" / "library", copy / "content")  # never the live content/
    shutil.copytree(ROOT / "scripts", copy / "scripts")
    shutil.copy(ROOT / "Makefile", copy / "Makefile")
    if not (ROOT / ".venv" / "bin" / "newsletter").exists():
        missing("no .venv with the newsletter command (make install)")
    (copy / ".venv").symlink_to(ROOT / ".venv")
    return copy


def run_demo(copy: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("NEWSLETTER_", "SMTP_", "DKIM_")) and k != "DATABASE_URL"}
    return subprocess.run(["bash", "scripts/demo.sh"], cwd=copy, env=env, capture_output=True, text=True,
                          timeout=120)


def test_demo_on_a_fresh_copy_sends_one_email_and_writes_archive_and_feeds(fresh_copy):
    done = run_demo(fresh_copy)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "ok: 1 article(s)" in out
    assert "added demo@example.com (confirmed)" in out

    box = mailbox.Maildir(fresh_copy / "var" / "outbox", create=False)
    keys = list(box.keys())
    assert len(keys) == 1
    message = message_from_bytes(box.get_bytes(keys[0]), policy=policy.default)
    assert message["To"].addresses[0].addr_spec == "demo@example.com"
    assert message["Subject"] == "What Is Microneedling?"
    assert message["List-Unsubscribe"]

    public = fresh_copy / "public"
    rss = etree.parse(str(public / "feed.xml")).getroot()
    assert [i.findtext("title") for i in rss.findall("./channel/item")] == ["What Is Microneedling?"]
    assert etree.parse(str(public / "atom.xml")).getroot().tag == "{http://www.w3.org/2005/Atom}feed"
    assert json.loads((public / "feed.json").read_text())["items"][0]["title"] == "What Is Microneedling?"
    archive = (public / "index.html").read_text()
    assert "What Is Microneedling?" in archive

    # where to look: the outbox file, the archive page and the feeds, as printed
    mail_line = next(line for line in out.splitlines() if "newest email in the outbox" in line)
    printed = mail_line.split(": ", 1)[1].split()[0]
    assert (fresh_copy / printed).resolve() == (fresh_copy / "var" / "outbox" / "new" / keys[0]).resolve()
    assert "archive: public/index.html" in out
    assert "feeds: public/feed.xml, public/atom.xml, public/feed.json" in out

    again = run_demo(fresh_copy)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "demo@example.com is already subscribed" in again.stdout
    assert "not sent again" in again.stdout
    assert len(list(mailbox.Maildir(fresh_copy / "var" / "outbox", create=False).keys())) == 1
