"""Delivery: finished messages, the send ledger, transports and the send loop."""
