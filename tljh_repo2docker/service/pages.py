"""HTML pages (placeholder routes; filled in below)."""


def routes(prefix: str) -> list:
    return []
