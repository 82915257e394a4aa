"""library-newsletter: a health library's articles as a daily email and feeds.

Follow one article from content/ to an inbox and a feed through the stages:
content (load and check) -> compose (the day's issue) -> render (email) ->
feeds / site (public/) -> deliver (the send ledger and transports) -> schedule.
"""
