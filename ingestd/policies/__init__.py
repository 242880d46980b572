"""The regulations as pure decisions: custody, deadlines, overdue cameras, gaps, clock drift, retention.

Every function here is a pure function of frozen records, settings and an injected `now`: no I/O, no
clock, no database. Jobs and the CLI gather the facts, call a policy and act on its decision.
"""
