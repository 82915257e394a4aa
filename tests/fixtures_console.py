"""Staff, reviews and the CLI for the console tests (tests/test_staff.py, test_review.py, test_console*.py)."""
from __future__ import annotations

from click.testing import CliRunner

PASSWORD = "correct horse battery staple ✓"
REVIEWER = "Dr Siân O’Connor-Müller"
CREDENTIALS = "MBBS, MRCGP"


def cli(content_dir, *args: str, env: dict | None = None, input: str | None = None):
    """``newsletter --content DIR ARGS`` in process, as ``pipeline.cli.main`` runs it (an
    expected error is one line and exit 1, never a traceback)."""
    from pipeline.cli import cli as group
    from pipeline.errors import NewsletterError

    result = CliRunner().invoke(group, ["--content", str(content_dir), *args], env=env or {}, input=input)
    if isinstance(result.exception, NewsletterError):
        result.error_line = f"error: {result.exception}"
    else:
        assert result.exception is None or isinstance(result.exception, SystemExit), \
            (args, repr(result.exception), result.output)
        result.error_line = None
    return result


def add_staff(engine, address: str, *roles: str, name: str = REVIEWER, credentials: str = CREDENTIALS,
              password: str = PASSWORD):
    from pipeline.staff import accounts
    return accounts.add(engine, address, name=name, roles=roles, password=password, credentials=credentials,
                        actor="cli:test")


def cheap_hashing(monkeypatch) -> None:
    """Argon2id at its cheapest parameters (RFC 9106's low-memory profile is what production
    uses; tests that are not about the hash's cost need not pay ~0.3 s a sign-in)."""
    from argon2 import PasswordHasher, profiles
    from pipeline.staff import accounts

    cheap = PasswordHasher.from_parameters(profiles.CHEAPEST)
    monkeypatch.setattr(accounts, "_hasher", cheap)
    monkeypatch.setattr(accounts, "_DUMMY_HASH", cheap.hash("not a password of anyone"))
