"""DKIM at full speed (issue 14): a message signed from its parts (``dkim_canon.Layout``: the issue's fixed
bytes canonicalised once, each recipient's few values per message) gets exactly the signature the whole
message gets, for any pieces; and the signing pool is driven by the event loop, with no helper threads,
and is sent each recipient's parts rather than the whole message."""
from __future__ import annotations

import asyncio
import hashlib
import threading
import time

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from fixtures_delivery import small_rendered
from pipeline.delivery.message import MessageTemplate
from pipeline.mail.dkim import dkim_signer
from pipeline.mail.dkim_canon import Layout, Prepared, relaxed_body
from pipeline.rendering.issue import Personal
from test_dkim import PREFS, UNSUB, keys, signing_settings, verify_all  # noqa: F401  (keys is a fixture)

NAMES = ["Zoë Brontë", 'Jo "JJ" Smith', "陳大文", "Amy 🩺 Murtagh", "=?utf-8?q?Mallory?=", None]


def _body(layout: Layout, values) -> bytes:
    return b"".join(p if isinstance(p, bytes) else values[p] for p in layout.body)


# -- the body hash from pieces is the whole body's, whatever the pieces -------------------------------

_bit = st.sampled_from([b"a", b"Z", b" ", b"  ", b"\t", b"=", b".", b"\r\n", b" \r\n", b"\t\r\n", b"\r", b"\n",
                        "é £ ’".encode(), "微针 🩺".encode(), b"=\r\n"])
_piece = st.lists(_bit, max_size=8).map(b"".join)


@hsettings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_piece, st.integers(0, 2)), min_size=1, max_size=8), st.lists(_piece, min_size=3, max_size=3))
def test_the_body_hash_from_pieces_equals_the_hash_of_the_whole_canonical_body(pieces, values):
    layout = Layout("k", b"From: a@b.c\r\n", tuple(pieces))
    expected = hashlib.sha256(relaxed_body(_body(layout, values))).digest()
    assert Prepared(layout).body_hash(values) == expected


@hsettings(max_examples=200, deadline=None)
@given(st.lists(_piece.map(lambda p: p + b"\r\n"), min_size=2, max_size=6),
       st.lists(_piece.map(lambda p: p + b"=\r\n"), min_size=2, max_size=2))
def test_whole_line_pieces_take_the_piecewise_path_and_still_agree(fixed, values):
    pieces = tuple(x for f in fixed[:-1] for x in (f, len(f) % 2)) + (fixed[-1] + b"--end--\r\n\r\n",)
    prepared = Prepared(Layout("k", b"", pieces))
    assert prepared.piecewise
    assert prepared.body_hash(values) == hashlib.sha256(relaxed_body(_body(prepared.layout, values))).digest()


# -- the signature from parts is the whole message's, and dkimpy verifies it -----------------------------

@pytest.mark.parametrize("name", NAMES)
def test_signatures_from_parts_equal_those_of_the_whole_message(settings, keys, name):
    s = signing_settings(settings, keys, dkim_ed25519_selector="edge", dkim_ed25519_private_key_path=str(keys[1]))
    signer = dkim_signer(s)
    template = MessageTemplate(small_rendered(subject="Microneedling – what’s new 🩺 £"), s)
    assert signer.learn(template.layout).piecewise  # an issue's layout takes the fast path
    greeting = f"Hello {name or 'there'},\t  with  spaces  "
    head, values = template.parts_to("reader@example.com", name, personal=Personal(UNSUB, PREFS, greeting),
                                     message_id="<p.1@my.klarity.health>")
    data = template.layout.message(head, values)
    assert data == template.render_to("reader@example.com", name, personal=Personal(UNSUB, PREFS, greeting),
                                      message_id="<p.1@my.klarity.health>")
    stamp = int(time.time())  # dkimpy refuses a t= in the future
    from_parts = signer.signatures_for(template.layout, head, values, stamp)
    assert from_parts == signer.signatures(data, stamp)
    assert verify_all(from_parts + data, keys[2]) == [True, True]


# -- the pool: no helper threads, and only each recipient's parts cross to it ----------------------------

def test_the_pool_signs_parts_from_the_event_loop_without_threads_or_whole_messages(settings, keys):
    s = signing_settings(settings, keys, dkim_sign_processes=2)
    signer = dkim_signer(s)
    rendered = small_rendered()
    rendered = type(rendered)(**{**rendered.__dict__, "html": rendered.html.replace(
        "Long line of premailer output. " * 60, "<p>A long issue: collagen, £ and ’.</p>\n" * 900)})
    template = MessageTemplate(rendered, s)
    assert template.size > 30_000
    people = [(f"r{i}@example.com", NAMES[i % len(NAMES)]) for i in range(40)]
    parts = [template.parts_to(email, name, personal=Personal(UNSUB, PREFS, f"Hello {name},"),
                               message_id=f"<b.{i}@my.klarity.health>") for i, (email, name) in enumerate(people)]
    threads = []

    async def run():
        batches = [signer.headers_batch(template.layout, parts[i:i + 10]) for i in range(0, 40, 10)]
        threads.append(threading.active_count())
        headers = [h for batch in await asyncio.gather(*batches) for h in batch]
        threads.append(threading.active_count())
        return headers

    before = threading.active_count()
    try:
        headers = asyncio.run(run())
        sent = signer._pool.bytes_sent()
    finally:
        signer.close()
    assert threads == [before, before]  # no executor threads competing with the event loop for the GIL
    # each worker got the layout once; beyond that, about 1 KB a message rather than the 30+ KB message
    assert sent < 2 * template.size + 40 * 2_000
    assert sent < 40 * template.size / 5
    for (head, values), header in zip(parts, headers):
        assert verify_all(header + template.layout.message(head, values), keys[2]) == [True]
