"""Serving SelFee: the OpenAI wire format, the Ray Serve app, the Gradio demo."""
