"""edge: one tool for a self-hoster's edge: a uvloop reverse proxy and a network controller."""

__version__ = "0.1.0"
