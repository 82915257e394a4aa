"""Two `newsletter serve` processes on one database behave as one service (issue 15, "Web nodes are stateless").

Requests are spread over both nodes, the way a load balancer would: the form is fetched from one node and posted
to the other, and an abuse run alternates between them. The rate limits, the per-address confirmation limit and
the mail queue live in the database, so they hold in total, not per node. The client address comes from
X-Forwarded-For only when the peer is a trusted proxy (the ``trusted_proxies`` setting).
"""
from __future__ import annotations

import time
from contextlib import ExitStack

import httpx

from test_web_concurrency import hidden_fields, in_parallel, newsletter_serve
from fixtures_subscribers import CONSENT


def two_nodes(stack: ExitStack, store_url, content_dir, tmp_path, smtp_port, **env):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    first = stack.enter_context(newsletter_serve(store_url, content_dir, tmp_path / "a", smtp_port, **env))
    # both nodes sit behind the same public base_url, as behind one load balancer
    second = stack.enter_context(newsletter_serve(store_url, content_dir, tmp_path / "b", smtp_port,
                                                  NEWSLETTER_BASE_URL=first[0], **env))
    return first[0], second[0]


def signup_via(form_node: str, post_node: str, email: str, client_ip: str):
    """A browser that loads the form from one node and whose post lands on the other."""
    client = httpx.Client(timeout=30)
    fields = hidden_fields(client.get(form_node + "/subscribe").text, "subscribe")

    def post():
        try:
            return client.post(post_node + "/subscribe", headers={"x-forwarded-for": client_ip},
                               data={"email": email, "frequency": "daily", **CONSENT, **fields}).status_code
        finally:
            client.close()
    return post


def test_the_per_ip_limit_holds_in_total_across_two_nodes(store_url, content_dir, tmp_path, smtp_server):
    with ExitStack() as stack:
        a, b = two_nodes(stack, store_url, content_dir, tmp_path, smtp_server.port,
                         NEWSLETTER_SUBSCRIBE_RATE_PER_MINUTE="5", NEWSLETTER_SUBSCRIBE_RATE_PER_HOUR="100")
        nodes = [(a, b), (b, a)]
        jobs = [signup_via(*nodes[i % 2], f"abuse-{i}@example.org", "203.0.113.7") for i in range(12)]
        codes = in_parallel(jobs)
        assert [c for c in codes if c >= 500] == []
        # 5 a minute for the address behind the proxy, in total: not 5 per node
        assert sorted(codes) == [303] * 5 + [429] * 7
        # another client behind the same proxy is not caught by that one's limit
        assert signup_via(a, b, "someone-else@example.org", "198.51.100.9")() == 303


def test_one_confirmation_per_address_across_nodes_and_both_queue_workers(store_url, content_dir, tmp_path,
                                                                          smtp_server):
    with ExitStack() as stack:
        a, b = two_nodes(stack, store_url, content_dir, tmp_path, smtp_server.port)
        nodes = [(a, b), (b, a)]
        # the same address (an IDN domain) typed in 20 times, from 20 client addresses, over both nodes at once
        jobs = [signup_via(*nodes[i % 2], "Zoe.OHara@Bücher.Example", f"192.0.2.{i + 1}") for i in range(20)]
        codes = in_parallel(jobs)
        assert set(codes) == {303}
        smtp_server.wait_for(1)
        time.sleep(2)  # both nodes' queue workers have had time to send anything else
        assert len(smtp_server.received) == 1
        (mail,) = smtp_server.received
        (rcpt,) = mail.rcpt_tos
        local, _, domain = rcpt.rpartition("@")
        assert local.lower() == "zoe.ohara" and domain.lower() in {"bücher.example", "xn--bcher-kva.example"}


def test_x_forwarded_for_from_an_untrusted_peer_is_ignored(content_dir, tmp_path, smtp_server):
    """With no trusted proxy, a client cannot dodge the limit by writing its own X-Forwarded-For."""
    url = f"sqlite:///{tmp_path / 'one.db'}"
    with newsletter_serve(url, content_dir, tmp_path, smtp_server.port, NEWSLETTER_TRUSTED_PROXIES="none",
                          NEWSLETTER_SUBSCRIBE_RATE_PER_MINUTE="3") as (base, _log):
        codes = [signup_via(base, base, f"dodge-{i}@example.org", f"203.0.113.{i + 1}")() for i in range(6)]
        assert codes == [303] * 3 + [429] * 3
