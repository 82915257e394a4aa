"""The one settings source.

Every setting the pipeline reads is declared once in ``SETTINGS`` with its
default and help text.  Values come, in increasing precedence, from:

1. the default declared here;
2. ``content/site.yaml`` (editorial settings: publication, footer, schedule...);
3. the environment: ``NEWSLETTER_<NAME>`` for any setting, plus the
   conventional names listed in ``Setting.env`` (for example ``DATABASE_URL``).

Secrets (``secret=True``) may only come from the environment: a secret found in
``site.yaml`` is an error, because that file is committed.

The CLI (``newsletter settings``), the README section "Settings" and
validation all read this table; a test fails when a setting is undocumented.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import unquote, urlsplit

import yaml

from pipeline.errors import ContentError

REQUIRED = object()  # marker: no default, the site file must provide it


@dataclass(frozen=True)
class Setting:
    name: str
    default: Any
    help: str
    env: str | None = None  # a conventional environment name besides NEWSLETTER_<NAME>
    secret: bool = False
    kind: type | None = None  # for values read from the environment (str by default)

    @property
    def env_names(self) -> tuple[str, ...]:
        names = [f"NEWSLETTER_{self.name.upper()}"]
        if self.env:
            names.insert(0, self.env)
        return tuple(names)


SETTINGS: tuple[Setting, ...] = (
    # -- publication ---------------------------------------------------------
    Setting("publication_name", REQUIRED, "Name shown in the email header, page titles and feeds."),
    Setting("publication_description", "", "One-line description used by the feeds and the archive page."),
    Setting("base_url", REQUIRED, "Absolute https URL where public/ is served; every link is built from it."),
    Setting("sender_name", REQUIRED, "Display name in the From header."),
    Setting("sender_address", REQUIRED, "Address in the From header; its domain is used for Message-IDs."),
    Setting("reply_to", "", "Optional Reply-To address."),
    Setting("unsubscribe_mailto", "", "mailto: address for List-Unsubscribe; defaults to unsubscribe@<sender domain>."),
    Setting("list_id", "", "List-Id header value; defaults to daily.<sender domain>."),
    Setting("feedback_id", "", "Optional Feedback-ID header (no per-recipient values)."),
    Setting("language", "en-GB", "Language of the content (html lang, feeds)."),
    # -- legal and medical text (word for word from the library pages) -------
    Setting("disclaimer", REQUIRED, "Medical disclaimer, shown in every email, page and feed item."),
    Setting("privacy_notice", REQUIRED, "Privacy notice, shown in every email, page and feed item."),
    Setting("terms_notice", "", "Publisher's statement on how health information is presented."),
    Setting("editorial_standards_url", "",
            "https page that \"editorial standards\" in the legal text links to (emails, pages, feed items); "
            "empty: the phrase is plain text and `newsletter check` warns."),
    Setting("terms_url", "",
            "https page that \"terms and conditions\" in the legal text links to (emails, pages, feed items); "
            "empty: the phrase is plain text and `newsletter check` warns."),
    Setting("email_privacy_notice", "",
            "The privacy notice as emails show it; empty: privacy_notice with \"to this website\" read as "
            "\"to us\" and any other \"this website\" as \"our website\" (an email is not a website). Pages and "
            "feeds always show privacy_notice word for word."),
    Setting("publisher", REQUIRED,
            "Legal footer: company_name, registered_office (lines), vat_number, company_number, phone, email."),
    Setting("why_you_get_this", "You are receiving this email because you subscribed to {publication_name}.",
            "Sentence in the footer telling the reader why they get the email."),
    # -- topics ---------------------------------------------------------------
    Setting("topics", {}, "Topic id -> {name, sensitive}. Sensitive topics are health conditions (special-category data)."),
    Setting("subject_template", "{{ title }}", "Jinja template for the subject; sees title, date, number, publication_name."),
    Setting("neutral_subject", "Your health library newsletter",
            "Subject used when an issue goes only to subscribers of a sensitive topic."),
    Setting("neutral_preheader", "Today's article from the health library.",
            "Preheader used when an issue goes only to subscribers of a sensitive topic."),
    # -- schedule -------------------------------------------------------------
    Setting("send_time", "07:00", "Daily send time, HH:MM, in the time zone below."),
    Setting("timezone", "Europe/London", "IANA time zone of the send time."),
    Setting("weekly_day", "monday", "Weekday on which weekly subscribers get the digest."),
    Setting("grace_minutes", 120, "A send missed by less than this is made late; after it the day is recorded as missed.", kind=int),
    Setting("send_when_nothing_due", False, "If true, a day with nothing scheduled sends the next unsent article.", kind=bool),
    Setting("feed_items", 20, "How many items each feed carries, newest first.", kind=int),
    Setting("archive_page_size", 50, "Articles per archive page (index.html, then page/2/, page/3/...).", kind=int),
    Setting("reconcile_seconds", 20.0,
            "How often `newsletter run` re-reads the calendar and pause from the database (CLI changes take effect within this).",
            kind=float),
    Setting("lease_seconds", 120.0,
            "Lifetime of the send leases (the daemons' and each issue's), renewed every third of it by a heartbeat "
            "thread; a holder that dies or stalls longer than this is taken over (a dead one on this host at once).",
            kind=float),
    Setting("send_nodes", "auto", "Whether several processes share one send: 'auto' (on PostgreSQL every sending "
            "process joins the send and claims batches of ledger rows; on SQLite one sends and the others wait), "
            "'single' (one sender per issue on any database) or 'share' (join, and refuse to start on SQLite). "
            "`newsletter run --join` is 'share' for that process. Give every node the same value."),
    Setting("web_host", "127.0.0.1", "Address the web service of `newsletter run` listens on."),
    Setting("web_port", 8000, "Port the web service of `newsletter run` listens on.", kind=int),
    Setting("web_root_path", "",
            "Set to base_url's path (e.g. /newsletter) when a reverse proxy strips that prefix before passing "
            "requests on (uvicorn's root_path); empty: the web service answers under base_url's path itself."),
    Setting("trusted_proxies", "127.0.0.1",
            "Comma-separated addresses (or CIDR ranges) of the reverse proxies whose X-Forwarded-For is believed: "
            "the client address behind them is what the per-IP sign-up limits count. From any other peer the "
            "header is ignored. `none`: no proxy is trusted."),
    # -- storage and output ---------------------------------------------------
    Setting("database_url", "sqlite:///var/newsletter.db", "SQLAlchemy URL of the database.", env="DATABASE_URL"),
    Setting("public_dir", "public", "Where static pages and feeds are written."),
    Setting("var_dir", "var", "Where the embedded database and outbox live."),
    # -- delivery -------------------------------------------------------------
    Setting("transport", "outbox", "How mail leaves: 'outbox' (a Maildir folder) or 'smtp'."),
    Setting("outbox_dir", "var/outbox", "Maildir folder used by the outbox transport."),
    Setting("smtp_host", "127.0.0.1", "SMTP relay host.", env="SMTP_HOST"),
    Setting("smtp_port", 25, "SMTP relay port.", env="SMTP_PORT", kind=int),
    Setting("smtp_security", "none", "'none', 'starttls' or 'tls' (implicit TLS).", env="SMTP_SECURITY"),
    Setting("smtp_username", "", "SMTP AUTH user name.", env="SMTP_USERNAME"),
    Setting("smtp_password", "", "SMTP AUTH password.", env="SMTP_PASSWORD", secret=True),
    Setting("smtp_connections", 8, "Persistent SMTP connections used concurrently.", kind=int),
    Setting("smtp_messages_per_connection", 1000, "Reconnect after this many messages on one connection.", kind=int),
    Setting("smtp_rate_limit", 0.0, "Global cap in messages per second (0 = no cap).", kind=float),
    Setting("smtp_timeout", 30.0, "Seconds before an SMTP command times out. A message whose reply has not come "
            "by then is uncertain (the relay may have it) and follows uncertain_policy.", kind=float),
    Setting("smtp_connect_timeout", 10.0, "Seconds to wait for a connection to the relay and for its greeting.",
            kind=float),
    Setting("smtp_give_up_after", 25.0, "Seconds a send keeps trying to connect while no connection to the relay "
            "works; then it stops with one line, every row left for `newsletter send --resume`.", kind=float),
    Setting("smtp_ca_file", "", "PEM file of CA certificates trusted for the relay's TLS (default: the system's).",
            env="SMTP_CA_FILE"),
    Setting("smtp_max_attempts", 5, "Tries per message within one send run on 4xx, timeouts and dropped "
            "connections; after that the row stays deferred for `newsletter send --resume`.", kind=int),
    Setting("smtp_retry_delay", 5.0, "Seconds before the first retry of a deferred message; doubles each try "
            "(capped at 5 minutes).", kind=float),
    Setting("delivery_batch_size", 10, "Ledger rows a connection takes (checked still due and eligible) at a "
            "time. Each row is marked `sending` only as its content goes out, so at most one message per "
            "connection can be uncertain after a crash.", kind=int),
    Setting("uncertain_policy", "resend", "What happens to messages that may or may not have reached the relay "
            "(in flight when a process died, or no reply within smtp_timeout): 'resend' (default: nobody missed; "
            "at most one duplicate per connection per crash) or 'skip' (left `uncertain`, the send unfinished, "
            "until `newsletter send --resume --uncertain resend|skip`)."),
    Setting("dkim_selector", "", "DKIM selector; signing is on when this and a key are set."),
    Setting("dkim_domain", "", "DKIM signing domain; defaults to the sender domain."),
    Setting("dkim_private_key", "", "DKIM private key (PEM) itself.", env="DKIM_PRIVATE_KEY", secret=True),
    Setting("dkim_private_key_path", "", "Path to the DKIM private key, outside the repository.", env="DKIM_PRIVATE_KEY_PATH"),
    Setting("dkim_ed25519_selector", "", "Selector of a second, Ed25519 DKIM signature (RFC 8463); when set, every "
            "message is signed with both keys (RSA first)."),
    Setting("dkim_ed25519_private_key", "", "Ed25519 DKIM private key (PEM) itself.", env="DKIM_ED25519_PRIVATE_KEY",
            secret=True),
    Setting("dkim_ed25519_private_key_path", "", "Path to the Ed25519 DKIM private key, outside the repository.",
            env="DKIM_ED25519_PRIVATE_KEY_PATH"),
    Setting("dkim_sign_processes", -1, "Worker processes that DKIM-sign SMTP batches while the sender keeps "
            "sending: 0 signs in the sending process; -1 (default) uses one per CPU core beyond the first.", kind=int),
    # -- secrets ---------------------------------------------------------------
    Setting("secret_key", "", "Signs subscriber tokens; changing it invalidates every link.", env="NEWSLETTER_SECRET", secret=True),
    # -- subscribers and the web service ----------------------------------------
    Setting("confirm_token_days", 7, "Days a sign-up confirmation link stays valid.", kind=int),
    Setting("consent_wording",
            "Yes, please email me the {publication_name} newsletter on the topics and at the frequency I chose. "
            "I can unsubscribe or change my choices at any time with the link in every email.",
            "Exact consent wording shown on the sign-up form and stored with each consent record."),
    Setting("topics_consent_wording",
            "I agree that {publication_name} keeps the topics I tick, which may say something about my health, "
            "and uses them only to choose which articles to send me.",
            "Explicit consent (UK GDPR Art. 9) asked with its own checkbox before any topic choice is stored; "
            "recorded with the consent record."),
    Setting("consent_version", "2026-03-01",
            "Version of the consent wordings (consent_wording, topics_consent_wording); change it whenever either changes."),
    Setting("privacy_policy_url", "",
            "The privacy policy linked from the sign-up form and after the privacy notice in emails, pages and "
            "feed items; empty: /privacy-policy on base_url's host."),
    Setting("subscribe_rate_per_minute", 5, "Sign-up form posts allowed per IPv4 address or IPv6 /64 per minute, "
            "counted in the database (0 turns the per-IP limits off).", kind=int),
    Setting("subscribe_rate_per_hour", 30, "Sign-up form posts allowed per IPv4 address or IPv6 /64 per hour.", kind=int),
    Setting("confirmations_per_address_per_day", 1, "Confirmation emails (or 'already subscribed' notes) one address "
            "can be sent in 24 hours, whoever types it in.", kind=int),
    Setting("rejoin_confirm_days", 30, "An address that unsubscribed or was erased gets at most one confirmation "
            "email in this many days.", kind=int),
    Setting("data_link_minutes", 60, "Minutes a one-time link to export or erase one's data stays valid.", kind=int),
    Setting("mail_retry_seconds", 30.0, "Delay before a queued transactional email is retried after a failure; "
            "doubles with each try, at most an hour.", kind=float),
    Setting("mail_max_attempts", 30, "Tries of a queued transactional email before it is given up (and shown by "
            "`newsletter status`).", kind=int),
    Setting("mail_poll_seconds", 2.0, "How often a mail queue worker looks for mail queued by another process.",
            kind=float),
    # -- bounces and complaints after the send (pipeline/bounces/) ------------------
    Setting("bounce_domain", "", "Domain of the VERP envelope sender bounces+<id>@<domain> (MAIL FROM / Return-Path "
            "of every message; From is unchanged); empty: the sender's domain."),
    Setting("bounce_score_threshold", 5.0, "Soft-bounce score that suppresses an address (each soft bounce adds 1).",
            kind=float),
    Setting("bounce_score_decay_days", 7.0, "Days for an address's soft-bounce score to halve.", kind=float),
    Setting("bounce_rate_alert", 2.0, "`newsletter status` alerts when an issue's bounce rate (hard and soft, at SMTP "
            "time and later, in percent of its recipients) exceeds this; complaints alert above 0.3%.", kind=float),
    Setting("bounce_raw_days", 30, "Days the raw bounce and complaint notifications are kept (then pruned).",
            kind=int),
    Setting("bounce_listen_host", "127.0.0.1", "Address `newsletter bounces serve` (SMTP/LMTP) listens on."),
    Setting("bounce_listen_port", 2525, "Port `newsletter bounces serve` listens on.", kind=int),
    Setting("bounce_imap_host", "", "IMAP server of a mailbox bounces land in (`newsletter bounces poll`); "
            "empty: no IMAP polling."),
    Setting("bounce_imap_port", 993, "IMAP port.", kind=int),
    Setting("bounce_imap_security", "tls", "'tls' (implicit), 'starttls' or 'none' (loopback only)."),
    Setting("bounce_imap_username", "", "IMAP user name.", env="BOUNCE_IMAP_USERNAME"),
    Setting("bounce_imap_password", "", "IMAP password.", env="BOUNCE_IMAP_PASSWORD", secret=True),
    Setting("bounce_imap_folder", "INBOX", "IMAP folder read; each message processed is deleted from it."),
    Setting("bounce_imap_poll_seconds", 60.0, "Seconds between polls of `newsletter bounces poll --loop`.",
            kind=float),
    Setting("webhook_replay_seconds", 300.0, "A signed webhook whose signed timestamp is older (or further ahead) "
            "than this is refused as a replay; its token or signature is remembered twice as long.", kind=float),
    Setting("ses_topic_arns", "", "Comma-separated SNS topic ARNs whose SES notifications /webhooks/ses accepts "
            "(empty: the SES webhook is off)."),
    Setting("ses_cert_dir", "", "Folder of SNS signing certificates (PEM, named as the SigningCertURL's last path "
            "segment) read instead of fetching them; the URL's host must still be sns.<region>.amazonaws.com."),
    Setting("ses_ca_file", "", "PEM file of the CAs trusted to issue the SNS signing certificate (default: the "
            "system's)."),
    Setting("sendgrid_webhook_public_key", "", "SendGrid signed event webhook verification key (base64 DER, as "
            "SendGrid shows it); empty: /webhooks/sendgrid is off.", env="SENDGRID_WEBHOOK_PUBLIC_KEY", secret=True),
    Setting("postmark_webhook_user", "", "Basic-auth user name in the Postmark webhook URL.",
            env="POSTMARK_WEBHOOK_USER"),
    Setting("postmark_webhook_password", "", "Basic-auth password in the Postmark webhook URL; empty: "
            "/webhooks/postmark is off.", env="POSTMARK_WEBHOOK_PASSWORD", secret=True),
    Setting("mailgun_webhook_signing_key", "", "Mailgun webhook signing key (HMAC-SHA256 of timestamp and token); "
            "empty: /webhooks/mailgun is off.", env="MAILGUN_WEBHOOK_SIGNING_KEY", secret=True),
    # -- the editorial console and medical sign-off ----------------------------------
    Setting("review_required", True, "Medical sign-off: when true, an article goes out only once a reviewer has "
            "approved its current version (`newsletter review approve`); `check` flags the others and a scheduled "
            "send of one is refused (`newsletter send --override-review REASON` overrides, audited).", kind=bool),
    Setting("staff_lockout_failures", 5, "Wrong passwords in a row that lock a staff account.", kind=int),
    Setting("staff_lockout_minutes", 15, "How long a locked staff account refuses every sign-in.", kind=int),
    Setting("staff_login_rate_per_ip", 30, "Staff sign-in attempts allowed per client IPv4 address or IPv6 /64 "
            "per hour, counted in the database.", kind=int),
    Setting("staff_login_rate_per_account", 20, "Staff sign-in attempts allowed per account per hour.", kind=int),
    Setting("console_idle_minutes", 30, "A console session unused this long ends (sign in again).", kind=int),
)

BY_NAME = {s.name: s for s in SETTINGS}


class Settings(Mapping[str, Any]):
    """Resolved settings: attribute and mapping access, read-only."""

    def __init__(self, values: dict[str, Any], source: Path | None = None, origins: dict[str, str] | None = None):
        self._values = dict(values)
        self.source = source
        self._origins = dict(origins or {})

    def origin(self, name: str) -> str:
        """Where ``name``'s value came from: "default", "site.yaml line N", "environment NAME",
        or "set by the program" (a value given in code, as tests do)."""
        return self._origins.get(name, "default")

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"unknown setting {name!r}") from None

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def replace(self, **changes: Any) -> "Settings":
        unknown = set(changes) - set(BY_NAME)
        if unknown:
            raise KeyError(f"unknown settings: {', '.join(sorted(unknown))}")
        origins = {**self._origins, **{name: "set by the program" for name in changes}}
        return Settings({**self._values, **changes}, self.source, origins)

    # -- addresses: every link, form action and redirect is built from base_url, never from a request

    @property
    def base_path(self) -> str:
        """base_url's path without the trailing slash: '/newsletter', or '' at the root."""
        return urlsplit(self.base_url).path.rstrip("/")

    def url(self, path: str = "/") -> str:
        """The absolute URL of ``path`` (starting with '/') under base_url."""
        return f"{self.base_url.rstrip('/')}{path}"

    @property
    def privacy_policy_url(self) -> str:
        if self._values.get("privacy_policy_url"):
            return self._values["privacy_policy_url"]
        parts = urlsplit(self.base_url)
        return f"{parts.scheme}://{parts.netloc}/privacy-policy"

    @property
    def sender_domain(self) -> str:
        return self.sender_address.rpartition("@")[2]

    @property
    def database_not_created(self) -> bool:
        """True when ``database_url`` names a SQLite file that does not exist yet: nothing was ever
        reviewed or corrected there, and a command that only reads (``build``, ``preview``) must
        not create it. Decided without importing SQLAlchemy, so such a build never pays for it."""
        return sqlite_file_missing(str(self.database_url))

    @property
    def sensitive_topics(self) -> frozenset[str]:
        return frozenset(t for t, spec in self.topics.items() if (spec or {}).get("sensitive"))


def sqlite_file_missing(url: str) -> bool:
    """True for a SQLite URL (``sqlite:///relative.db``, ``sqlite:////abs.db``, any driver) whose
    file does not exist; False for any other database, and for SQLite in memory."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+", 1)[0].lower() != "sqlite":
        return False
    database = unquote(rest.partition("/")[2].partition("?")[0])  # what SQLAlchemy's make_url gives
    return bool(database) and database != ":memory:" and not database.startswith("file:") \
        and not Path(database).exists()


def _coerce(setting: Setting, raw: str) -> Any:
    kind = setting.kind or str
    if kind is bool:
        return raw.strip().lower() in {"1", "true", "yes", "on"}
    try:
        return kind(raw)
    except ValueError:
        raise ContentError(f"environment value for {setting.name} is not a valid {kind.__name__}: {raw!r}") from None


SITE_FILE = "site.yaml"


def load_settings(content_dir: Path | str = "content", env: Mapping[str, str] | None = None) -> Settings:
    """Resolve every setting from defaults, ``<content_dir>/site.yaml`` and the environment."""
    env = os.environ if env is None else env
    path = Path(content_dir) / SITE_FILE
    site: dict[str, Any] = {}
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            line = getattr(getattr(exc, "problem_mark", None), "line", -1) + 1
            raise ContentError(f"bad YAML: {getattr(exc, 'problem', exc)}", path=path, line=line or None) from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ContentError("site settings must be a mapping", path=path, line=1)
        site = loaded or {}
    unknown = sorted(set(site) - set(BY_NAME))
    if unknown:
        raise ContentError(f"unknown setting(s): {', '.join(unknown)}", path=path, line=_line_of(path, unknown[0]))
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    missing: list[str] = []
    for s in SETTINGS:
        if s.secret and s.name in site:
            raise ContentError(f"{s.name} is a secret: set it in the environment ({s.env_names[0]}), not in the repository",
                               path=path, line=_line_of(path, s.name))
        value = site.get(s.name, s.default)
        if s.name in site:
            origins[s.name] = f"{SITE_FILE} line {_line_of(path, s.name) or '?'}"
        for name in s.env_names:
            if env.get(name) not in (None, ""):
                value = _coerce(s, env[name])
                origins[s.name] = f"environment {name}"
                break
        if value is REQUIRED:
            missing.append(s.name)
        values[s.name] = value
    if missing:
        raise ContentError(f"missing required setting(s): {', '.join(missing)}", path=path)
    return Settings(values, path, origins)


def _line_of(path: Path, key: str) -> int | None:
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith(f"{key}:"):
            return number
    return None


def describe() -> list[tuple[str, str, str, str]]:
    """Rows of (name, default, environment, help) for the CLI and the README."""
    rows = []
    for s in SETTINGS:
        default = "(required)" if s.default is REQUIRED else ("(secret)" if s.secret and not s.default else repr(s.default))
        rows.append((s.name, default, ", ".join(s.env_names), s.help))
    return rows
