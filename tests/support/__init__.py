"""Test servers and builders shared by both tiers."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
