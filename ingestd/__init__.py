"""ingestd application: watchers, dock manager, policies, jobs, control socket and entry points."""
