"""Tests that break things for real: limits, full or read-only file systems, SIGKILL."""
