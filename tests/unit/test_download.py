"""resolve_input: local paths, file:// URLs through the download path (offline), sha256 checks, the cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from toolkit.data.download import cache_path, resolve_input
from toolkit.errors import DataError

CONTENT = b" anarchism originated as a term of abuse\n" * 1000


@pytest.fixture()
def source(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "corpus.txt"
    path.parent.mkdir()
    path.write_bytes(CONTENT)
    return path


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_local_path_is_used_in_place(source: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    assert resolve_input(str(source), cache) == source
    assert resolve_input(str(source), cache, sha256=digest(CONTENT).upper()) == source
    assert not cache.exists()  # nothing copied for a local file


def test_local_path_missing_or_directory(tmp_path: Path) -> None:
    with pytest.raises(DataError) as error:
        resolve_input(str(tmp_path / "nope.zip"), tmp_path / "cache")
    assert str(error.value) == f"input file {tmp_path / 'nope.zip'} does not exist"
    with pytest.raises(DataError) as error:
        resolve_input(str(tmp_path), tmp_path / "cache")
    assert str(error.value) == f"input {tmp_path} is not a file"


def test_local_path_sha_mismatch_names_file_and_both_digests(source: Path, tmp_path: Path) -> None:
    wrong = "0" * 64
    with pytest.raises(DataError) as error:
        resolve_input(str(source), tmp_path / "cache", sha256=wrong)
    assert str(error.value) == f"{source}: sha256 mismatch: expected {wrong}, got {digest(CONTENT)}"
    assert source.read_bytes() == CONTENT  # the user's own file is never deleted


def test_file_url_downloads_into_cache_with_sha(source: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    url = source.as_uri()
    got = resolve_input(url, cache, sha256=digest(CONTENT))
    assert got == cache_path(url, cache)
    assert got.parent.parent == cache and got.name == "corpus.txt"
    assert got.read_bytes() == CONTENT
    # no temporary file left; the digest is recorded beside the file, to check the cached copy when reused
    assert sorted(p.name for p in got.parent.iterdir()) == ["corpus.txt", "corpus.txt.sha256"]
    assert (got.parent / "corpus.txt.sha256").read_text() == digest(CONTENT) + "\n"
    source.unlink()  # the second call is served from the cache
    assert resolve_input(url, cache) == got
    assert resolve_input(url, cache, sha256=digest(CONTENT)) == got


def test_file_url_sha_mismatch_removes_download(source: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    url = source.as_uri()
    wrong = "ab" * 32
    with pytest.raises(DataError) as error:
        resolve_input(url, cache, sha256=wrong)
    dest = cache_path(url, cache)
    assert str(error.value) == (
        f"{url} (downloaded to {dest}): sha256 mismatch: expected {wrong}, got {digest(CONTENT)}"
    )
    assert list(dest.parent.iterdir()) == []  # neither the bad file nor its temporary name remains


def test_stale_cached_file_is_downloaded_again(source: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    url = source.as_uri()
    stale = cache_path(url, cache)
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half a file")
    assert resolve_input(url, cache, sha256=digest(CONTENT)).read_bytes() == CONTENT


def test_missing_url_is_a_data_error(tmp_path: Path) -> None:
    url = (tmp_path / "missing.zip").as_uri()
    with pytest.raises(DataError) as error:
        resolve_input(url, tmp_path / "cache")
    assert str(error.value).startswith(f"cannot download {url}: ")
    assert "No such file or directory" in str(error.value)
    assert list(cache_path(url, tmp_path / "cache").parent.iterdir()) == []


def test_cache_path_separates_equal_names_from_different_urls(tmp_path: Path) -> None:
    one = cache_path("https://a.example/x/text8.zip", tmp_path)
    two = cache_path("https://b.example/x/text8.zip", tmp_path)
    assert one.name == two.name == "text8.zip"
    assert one != two
