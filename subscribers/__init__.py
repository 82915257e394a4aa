"""Subscribers: the store, consent records, suppression and signed tokens."""
