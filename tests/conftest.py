"""Shared pytest setup: makes tests/ importable (model_fixtures) under --import-mode=importlib."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
