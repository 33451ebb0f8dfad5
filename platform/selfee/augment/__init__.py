"""Augmentation: teacher answer → critique → revision chains (loop, cleanup, journal, job)."""
