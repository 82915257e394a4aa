"""Operations: what `newsletter status` reports and its command."""
