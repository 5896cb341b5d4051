"""Pure per-event logic: no I/O, no clock, no environment."""
