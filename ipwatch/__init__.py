"""ipwatch: keep Asterisk's public address right on a dynamic IP."""

__version__ = "0.1.0"
