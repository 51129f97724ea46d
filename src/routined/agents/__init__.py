"""Agents: what runs a session to its end — Claude Code through the Agent SDK, or any
agent CLI — given one `Launch`; what the agent is told, and its home."""
