"""Asterisk itself: its configuration files and the interfaces that control it."""
