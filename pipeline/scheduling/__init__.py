"""Scheduling: the calendar, what a day sends, leases, stops and the daemon."""
