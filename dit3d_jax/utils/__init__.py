"""Utilities: sample files (`video`), metrics and progress (`logging`), entry-point errors (`cli`)."""
