"""Exporting a trained model: GGUF files for llama.cpp (``gguf.py``), made with llama.cpp's
own converter and quantizer, measured against the source model."""
