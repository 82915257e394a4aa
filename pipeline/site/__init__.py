"""Site: the static archive, the feeds, the build caches and serving ``public/``."""
