"""The HTTP surface: the app, the fire endpoint, the management API and the one error envelope."""
