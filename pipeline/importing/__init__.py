"""Import: a library page (its text, or its HTML) as an article file and an author file.

``page`` (the intermediate value, citations and references) < ``trailer`` < the two readers
``text`` and ``html`` < ``writer`` < ``importer`` (reading a file, comparing the site blocks,
the whole import).
"""
