"""Schedules: when a schedule fires, and the loop that decides them as they fall due."""
