"""abspo: Anchored Bipolicy Self-Play."""
