"""Privacy: a person's data rights (export and erasure across the store and the send ledger) and the one-time links that reach them."""
