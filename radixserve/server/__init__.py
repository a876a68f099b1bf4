"""OpenAI-compatible HTTP server (FastAPI + uvicorn) around one Engine."""
from radixserve.server.app import ServerConfig, build_app

__all__ = ["ServerConfig", "build_app"]
