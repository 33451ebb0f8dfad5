"""Completion engines for revision control: a local Hugging Face model, or an endpoint."""
