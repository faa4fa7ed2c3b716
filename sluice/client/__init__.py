"""The SDK production services use: assignments, serve and reward logging."""
