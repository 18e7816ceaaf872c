from __future__ import annotations

from pathlib import Path

from raykv.engines import MemOnly
from tests.engines.contract import KVStoreContract


class TestMemOnly(KVStoreContract):
    engine_cls = MemOnly

    def test_seal_writes_the_whole_state(self, tmp_path: Path) -> None:
        with MemOnly(tmp_path) as s:
            s.multi_set({b"k%04d" % i: b"v" * 8 for i in range(1000)})
            first = s.seal()
            s.set(b"k0000", b"w" * 8)
            second = s.seal()
            snap = [n for n in second if n.endswith(".snap")]
            assert len(snap) == 1 and snap[0] not in first
            assert (tmp_path / snap[0]).stat().st_size > 1000 * 16
