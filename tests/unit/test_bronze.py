"""Bronze readers: every value as a string, each row with its line number, malformed lines set aside with theirs."""

from __future__ import annotations

import datetime as dt
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lakehouse.bronze import bronze_schema, file_format
from lakehouse.bronze.read import read_csv, read_json, read_parquet
from lakehouse.errors import SourceFileError


def test_csv_values_are_strings_and_lines_count_the_header_as_one() -> None:
    raw = b"k,price,day\n1,10.50,1995-03-01\n007,,1995-03-02\n"

    rows, lines, bad = read_csv(raw, "raw/t/a.csv")

    assert rows.schema == pa.schema([("k", pa.string()), ("price", pa.string()), ("day", pa.string())])
    # leading zeros kept, an empty field is an empty string (validation decides what it means)
    assert rows.to_pylist() == [
        {"k": "1", "price": "10.50", "day": "1995-03-01"},
        {"k": "007", "price": "", "day": "1995-03-02"},
    ]
    assert (lines, bad) == ([2, 3], [])


def test_csv_malformed_lines_are_set_aside_with_their_line_number_text_and_reason() -> None:
    # given a file with a short line and a long line between good ones
    raw = b"a,b,c\n1,2,3\n4,5\n6,7,8\n9,10,11,12\n13,14,15\n"

    rows, lines, bad = read_csv(raw, "raw/t/a.csv")

    # then the good rows keep their own line numbers, and the bad ones are reported with theirs
    assert rows.column("a").to_pylist() == ["1", "6", "13"]
    assert lines == [2, 4, 6]
    assert bad == [
        (3, "4,5", "expected 3 fields, found 2"),
        (5, "9,10,11,12", "expected 3 fields, found 4"),
    ]


def test_csv_crlf_line_endings() -> None:
    rows, lines, bad = read_csv(b"a,b,c\r\n1,2,3\r\n4,5\r\n6,7,8\r\n", "raw/t/a.csv")
    assert rows.to_pylist() == [{"a": "1", "b": "2", "c": "3"}, {"a": "6", "b": "7", "c": "8"}]
    assert lines == [2, 4]
    assert [b[:2] for b in bad] == [(3, "4,5")]


def test_csv_quoted_newlines_stay_inside_the_value_and_numbering_counts_records() -> None:
    # given a record whose quoted value spans two physical lines, then a malformed record, then a good one
    raw = b'a,b,c\n1,"first\nsecond",3\n4,5\n6,"x,y",8\n'

    rows, lines, bad = read_csv(raw, "raw/t/a.csv")

    assert rows.to_pylist() == [{"a": "1", "b": "first\nsecond", "c": "3"}, {"a": "6", "b": "x,y", "c": "8"}]
    # numbers are record numbers (documented): the two-line record is record 2, the malformed one record 3
    assert lines == [2, 4]
    assert [b[:2] for b in bad] == [(3, "4,5")]


def test_csv_blank_lines_still_count_as_lines() -> None:
    raw = b"a,b,c\n1,2,3\n\n4,5,6\n7,8\n"

    rows, lines, bad = read_csv(raw, "raw/t/a.csv")

    assert rows.column("a").to_pylist() == ["1", "4"]
    assert lines == [2, 4]
    assert [b[:2] for b in bad] == [(5, "7,8")]


def test_csv_header_only_gives_no_rows() -> None:
    rows, lines, bad = read_csv(b"a,b\n", "raw/t/a.csv")
    assert rows.num_rows == 0 and rows.column_names == ["a", "b"] and lines == [] and bad == []


def test_csv_empty_file_is_a_source_file_error() -> None:
    with pytest.raises(SourceFileError) as info:
        read_csv(b"", "raw/t/empty.csv")
    assert info.value.path == "raw/t/empty.csv"


def test_csv_with_a_utf8_byte_order_mark() -> None:
    # given a file saved by a spreadsheet tool, with a BOM before the header
    raw = b"\xef\xbb\xbfk,name\n007,x\n"

    rows, lines, _ = read_csv(raw, "raw/t/excel.csv")

    assert rows.schema == pa.schema([("k", pa.string()), ("name", pa.string())])
    assert rows.to_pylist() == [{"k": "007", "name": "x"}]
    assert lines == [2]


def test_json_lines_with_invalid_json_and_non_objects() -> None:
    # given NDJSON with a broken line, an array, a blank line, a string, and keys that differ between records
    raw = (
        b'{"k": 1, "name": "a"}\n'
        b"{bad json\n"
        b"[1, 2]\n"
        b"\n"
        b'{"k": 2.5, "nested": {"x": [1]}, "name": null, "flag": true}\n'
        b'"just a string"\n'
    )

    rows, lines, bad = read_json(raw, "raw/t/a.ndjson")

    # then objects become rows of strings (nested values as JSON text), with their line numbers
    assert rows.schema == pa.schema([(c, pa.string()) for c in ("k", "name", "nested", "flag")])
    assert rows.to_pylist() == [
        {"k": "1", "name": "a", "nested": None, "flag": None},
        {"k": "2.5", "name": None, "nested": '{"x": [1]}', "flag": "true"},
    ]
    assert lines == [1, 5]
    assert [(n, text) for n, text, _ in bad] == [(2, "{bad json"), (3, "[1, 2]"), (6, '"just a string"')]
    assert bad[0][2].startswith("invalid JSON")
    assert bad[1][2] == "expected a JSON object, found list"
    assert bad[2][2] == "expected a JSON object, found str"


def test_a_null_line_is_a_tombstone_only_in_change_events() -> None:
    raw = b'{"k": 1}\nnull\n{"k": 2, "payload": {"op": "c"}}\n'

    # a change-event source: Kafka's tombstone after a delete, no record; each event kept whole, as landed
    rows, lines, bad = read_json(raw, "raw/customer_cdc/a.ndjson", changes=True)
    assert (rows.column_names, lines, bad) == (["event"], [1, 3], [])
    assert rows.column("event").to_pylist() == ['{"k": 1}', '{"k": 2, "payload": {"op": "c"}}']
    # any other source: a malformed line, set aside with its number
    rows, lines, bad = read_json(raw, "raw/orders/a.ndjson")
    assert (rows.num_rows, lines, bad) == (2, [1, 3], [(2, "null", "expected a JSON object, found null")])


def test_json_line_separator_characters_inside_a_string_value() -> None:
    # given valid NDJSON whose text holds a Unicode line separator (legal unescaped in JSON strings)
    records = [{"k": 1, "comment": "first\u2028second"}, {"k": 2, "comment": "next\x85line"}]
    raw = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode()

    rows, lines, bad = read_json(raw, "raw/t/a.ndjson")

    assert bad == []
    assert rows.to_pylist() == [{"k": "1", "comment": "first\u2028second"}, {"k": "2", "comment": "next\x85line"}]
    assert lines == [1, 2]


def test_parquet_values_become_strings_numbered_from_one() -> None:
    buf = io.BytesIO()
    pq.write_table(
        pa.table(
            {
                "k": pa.array([1, None], pa.int64()),
                "price": pa.array([12345.67, 0.1], pa.float64()),
                "day": pa.array([dt.date(1995, 3, 1), None], pa.date32()),
                "name": ["a", "b"],
            }
        ),
        buf,
    )

    rows, lines, bad = read_parquet(buf.getvalue(), "raw/t/a.parquet")

    assert rows.schema == pa.schema([(c, pa.string()) for c in ("k", "price", "day", "name")])
    assert rows.to_pylist() == [
        {"k": "1", "price": "12345.67", "day": "1995-03-01", "name": "a"},
        {"k": None, "price": "0.1", "day": None, "name": "b"},
    ]
    assert (lines, bad) == ([1, 2], [])


def test_unreadable_parquet_is_a_source_file_error() -> None:
    with pytest.raises(SourceFileError) as info:
        read_parquet(b"this is not parquet", "raw/t/broken.parquet")
    assert info.value.path == "raw/t/broken.parquet"


def test_file_format_by_extension_and_bronze_schema() -> None:
    assert [file_format(p) for p in ("a.csv", "a.CSV", "a.json", "a.ndjson", "a.jsonl", "a.parquet")] == [
        "csv", "csv", "json", "json", "json", "parquet",
    ]
    assert file_format("a.txt") is None and file_format("README") is None
    schema = bronze_schema(["k", "v"])
    assert schema.names == ["k", "v", "_source_file", "_source_line", "_ingested_at", "_run_id"]
    assert schema.field("k").type == pa.string() and schema.field("_source_line").type == pa.int64()


def test_an_unclosed_quote_is_refused_naming_the_line_it_opened_on() -> None:
    # pyarrow would read this as one row whose last value swallows the rest of the file
    raw = b'a,b\n1,"x ""quoted"" fine"\n2,"never closed\n3,z\n4,w\n'
    with pytest.raises(SourceFileError, match="opened on line 3 is never closed"):
        read_csv(raw, "raw/t/quote.csv")


def test_compressed_text_files_have_their_inner_format() -> None:
    assert file_format("raw/t/part-0.csv.gz") == "csv"
    assert file_format("raw/t/part-0.NDJSON.GZ") == "json"
    assert file_format("raw/t/part-0.parquet.gz") is None
    assert file_format("raw/t/notes.txt.gz") is None


def test_a_quote_inside_an_unquoted_value_is_just_a_character() -> None:
    rows, lines, bad = read_csv(b'a,b\n1,12" pizza\n2,"say ""hi"", then go"\n', "raw/t/ok.csv")
    assert rows.column("b").to_pylist() == ['12" pizza', 'say "hi", then go'] and lines == [2, 3] and not bad


def test_ndjson_that_is_not_utf8_is_refused_wherever_the_bad_byte_is() -> None:
    with pytest.raises(SourceFileError, match="byte 0xe9 at offset 10"):
        read_json('{"x": "caf\u00e9"}'.encode("latin-1"), "raw/t/latin1.ndjson")
