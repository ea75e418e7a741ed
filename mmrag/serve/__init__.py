"""Serving the index: the query service, the HTTP API, API keys, the chat page, `mmrag up`'s supervisor."""
