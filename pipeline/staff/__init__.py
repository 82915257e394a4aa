"""Staff accounts, their sign-ins and the audit log (the editorial console's people)."""
