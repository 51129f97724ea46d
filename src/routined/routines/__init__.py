"""Routines as code; the old module's names stay here while it is split in two steps."""

from routined.routines.spec import *  # noqa: F403
