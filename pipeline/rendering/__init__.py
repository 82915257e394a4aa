"""Rendering: which articles make an issue, and the issue as subject, preheader, HTML and text."""
