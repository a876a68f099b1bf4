"""Backends of the frontend language: an in-process Engine, or a radixserve server."""
from radixserve.lang.backend.base import Backend, GenOutput, ScoreOutput, ScoreRequest
from radixserve.lang.backend.local import LocalBackend
from radixserve.lang.backend.runtime_endpoint import EndpointError, RuntimeEndpoint

__all__ = ["Backend", "EndpointError", "GenOutput", "LocalBackend", "RuntimeEndpoint", "ScoreOutput", "ScoreRequest"]
