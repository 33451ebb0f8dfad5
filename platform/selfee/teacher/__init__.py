"""The offline teacher: an OpenAI-compatible stand-in for a teacher or judge LLM."""
