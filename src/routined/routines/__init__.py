"""Routines as code, in parts so that the format can be checked without the store: `spec`
(the typed format), `policy` (catch-up and overlap, which fire decisions read too),
`load` (files into it) and `apply` (it into the store); each is imported from its own
module."""
