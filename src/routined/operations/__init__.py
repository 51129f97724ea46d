"""What can be done to accounts, routines, triggers, tokens, runs, keys and secrets, and by whom.

The management API and the CLI both call these operations, so a command prints the
same thing whether it works on the store here or on a server through the API. Each
takes the session of one transaction (`access.perform`), the `Principal` asking and
the clock, and answers with plain JSON-able values; what cannot be done raises one of
routined's error kinds (`routined.errors`), which the HTTP surface answers with a
status. A principal never learns of another account's objects: they are "not found",
as if they did not exist.

One module per concept: `access` (one transaction per operation, who may do what,
and the lookups that hide what a principal may not see), `accounts`, `api_keys`,
`secrets`, `routines` (with `tenancy`, what an account's key may put in them),
`triggers` (and their tokens), `runs` (and fires by hand), `deliveries` (GitHub's).
"""
