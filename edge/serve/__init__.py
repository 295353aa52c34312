"""``edge serve``: the uvloop reverse proxy (see proxy.py for the data path)."""
