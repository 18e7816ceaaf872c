from __future__ import annotations

from typing import Any

import pytest


@pytest.mark.s3
def test_moto_server_is_a_real_s3_api(s3_bucket: tuple[str, dict[str, Any]]) -> None:
    import s3fs

    url, options = s3_bucket
    fs = s3fs.S3FileSystem(**options)
    fs.pipe(f"{url}/hello.txt", b"hi")
    assert fs.cat(f"{url}/hello.txt") == b"hi"
    assert fs.ls(url, detail=False) == [f"{url[5:]}/hello.txt"]
