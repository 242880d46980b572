"""Persistence: write-once object store, catalog and tamper-evident audit chain."""
