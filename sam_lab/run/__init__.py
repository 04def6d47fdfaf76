"""Everything around one run's directory: claiming it (rundir), its checkpoint, metrics files and summary,
what stops a run early (faults: preemption, NaN), the loggers (W&B), and a sweep job's resources (launch)."""
