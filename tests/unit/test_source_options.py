"""A source's reader options: a CSV delimiter, quote character and null markers, gzip whatever the extension."""

from __future__ import annotations

import gzip

import pytest

from lakehouse import ConfigError, Source
from lakehouse.bronze.read import read_csv, read_landed
from lakehouse.storage import Storage


def test_a_semicolon_file_with_single_quotes_and_null_markers_reads_as_declared() -> None:
    raw = b"id;name;note\n1;'Smith; John';NULL\n2;Ann;\\N\n3;'it''s';''\n"
    rows, lines, bad = read_csv(raw, "raw/t/a.csv", delimiter=";", quote="'", nulls=("NULL", "\\N"))
    assert bad == [] and lines == [2, 3, 4]
    assert rows.column("name").to_pylist() == ["Smith; John", "Ann", "it's"]
    # a marker is no value; a quoted empty value stays an empty value
    assert rows.column("note").to_pylist() == [None, None, ""]


def test_without_null_markers_every_value_is_kept_as_landed() -> None:
    rows, _, _ = read_csv(b"id,note\n1,NULL\n2,\n", "raw/t/a.csv")
    assert rows.column("note").to_pylist() == ["NULL", ""]


def test_an_unclosed_quote_is_found_with_the_declared_quote_and_delimiter() -> None:
    from lakehouse.errors import SourceFileError

    with pytest.raises(SourceFileError, match="opened on line 3 is never closed"):
        read_csv(b"a;b\n1;x\n2;'never\n3;y\n", "raw/t/q.csv", delimiter=";", quote="'")


def test_a_declared_gzip_source_is_decompressed_whatever_its_extension(tmp_path: object) -> None:
    storage = Storage(str(tmp_path))
    storage.write_bytes_atomic("raw/t/part-0.csv", gzip.compress(b"a,b\n1,2\n"))
    rows, lines, _ = read_landed(storage, "raw/t/part-0.csv", "csv", Source("t", format="csv", compression="gzip"))
    assert rows.to_pylist() == [{"a": "1", "b": "2"}] and lines == [2]


@pytest.mark.parametrize(("options", "message"), [
    ({"format": "xml"}, "format must be csv, ndjson or parquet"),
    ({"compression": "zip"}, "compression must be gzip"),
    ({"delimiter": ";;"}, "delimiter must be one character"),
    ({"delimiter": "'", "quote": "'"}, "delimiter and quote must differ"),
])
def test_options_that_cannot_work_are_refused_naming_the_source(options: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        Source("t", **options)  # type: ignore[arg-type]
    assert "Source('t')" in str(e.value)
