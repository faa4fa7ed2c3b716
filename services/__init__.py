"""Long-running programs: assignment sidecar, control API, scheduler, simulator."""
