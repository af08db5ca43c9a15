"""Utilities: sample files (`video`), metrics and progress (`logging`)."""
