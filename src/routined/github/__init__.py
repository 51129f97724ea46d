"""GitHub: the app that acts for routined, the webhook receiver, events and their matcher."""
