"""Ollama's HTTP API (/api/chat, /api/generate, /api/tags, /api/show, /api/ps, /api/version) over
the same engine, prompt rendering and validation as the OpenAI routes."""
