"""The HTTP edge: routes, server-sent events, and the inspector's files (``web/``)."""
