"""The daemon's control socket: an authenticated JSON-lines protocol that `ingestctl` speaks.

`registry` is where handlers are declared (name, roles, whether they mutate or touch footage); `server`
authenticates callers by SO_PEERCRED and dispatches; `client` is what `ingestctl` calls.
"""
