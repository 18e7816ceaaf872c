"""AppendLog engine (Bitcask-style).

``engine.py`` holds the design, ``runfile.py`` the bytes, ``merge.py`` the merge policy.
"""

from raykv.engines.appendlog.engine import AppendLog

__all__ = ["AppendLog"]
