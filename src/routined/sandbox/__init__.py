"""The agent's walls: bubblewrap, resource caps, and the only way out (egress)."""
