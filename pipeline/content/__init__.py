"""Content: the library of articles, its checks, the import, and Markdown to HTML and text."""
