"""Training helpers both tasks share: non-finite guards, optimizer and schedule, exact resume, safe checkpoint I/O."""
