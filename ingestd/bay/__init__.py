"""The bay display: a read-only page for the officers at the docks, served by the daemon when enabled."""
