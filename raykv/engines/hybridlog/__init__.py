"""HybridLog engine (FASTER-style): ``engine.py`` holds the design, ``runfile.py`` the bytes."""

from raykv.engines.hybridlog.engine import HybridLog

__all__ = ["HybridLog"]
