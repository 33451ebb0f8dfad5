"""Batch inference with revision control."""
