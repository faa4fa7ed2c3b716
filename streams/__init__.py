"""Faust stream processors: attribution, statistics, weight publishing, monitors, sink."""
