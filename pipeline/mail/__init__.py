"""Mail: how a finished message leaves (transports), its headers and its DKIM signature."""
