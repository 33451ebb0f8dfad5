"""Pairwise LLM judging (both answer orders) and the reports that compare two models."""

from selfee.judge.scores import parse_score

__all__ = ["parse_score"]
