"""Bounces and complaints after the send: VERP ids, ways in, parsing, policy, evidence, rates."""
