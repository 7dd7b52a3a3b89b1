"""What one run keeps in the lake while it works: stage checkpoints, and the fault-injection hook
that tests use to kill a run at a named point."""
