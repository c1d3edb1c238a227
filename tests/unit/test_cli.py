"""The lakehouse command: argument parsing and the query subcommand on a real small table."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import write_deltalake

from lakehouse.ops.cli import _parser, main


@pytest.fixture
def root(tmp_path: Path) -> Path:
    write_deltalake(str(tmp_path / "gold/sales"), pa.table({"nation": ["FRANCE", "PERU"], "revenue": [1.5, 2.0]}))
    return tmp_path


def test_query_prints_csv(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["query", "SELECT nation, revenue FROM gold.sales ORDER BY nation", "--root", str(root),
                 "--format", "csv"])
    assert code == 0
    assert capsys.readouterr().out.strip().splitlines() == ['"nation","revenue"', '"FRANCE",1.5', '"PERU",2']


def test_query_prints_json_lines(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", "SELECT sum(revenue) AS total FROM gold.sales", "--root", str(root), "--format", "json"]) == 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == [{"total": 3.5}]


def test_query_default_format_is_a_table(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", "SELECT * FROM gold.sales", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "FRANCE" in out and "PERU" in out and "shape: (2, 2)" in out


def test_root_comes_from_the_environment(
    root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LAKEHOUSE_ROOT", str(root))
    assert main(["query", "SELECT count(*) AS n FROM gold.sales", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"n": 2}


def test_query_error_exits_1_with_the_message_on_stderr(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["query", "SELECT * FROM gold.missing", "--root", str(root)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and "gold.sales" in captured.err


def test_parser() -> None:
    args = _parser().parse_args(["-v", "run", "--root", "/l", "--full-refresh"])
    assert (args.command, args.root, args.pipeline) == ("run", "/l", None)  # None: the configuration's, else tpch
    assert _parser().parse_args(["run", "--pipeline", "pipelines/web.py"]).pipeline == "pipelines/web.py"
    assert (args.full_refresh, args.verbose) == (True, True)
    args = _parser().parse_args(["demo-data", "--scale-factor", "0.01", "--months", "3", "--parts-per-month", "2"])
    assert (args.scale_factor, args.months, args.parts_per_month, args.seed) == (0.01, 3, 2, None)
    args = _parser().parse_args(["query", "SELECT 1"])
    assert (args.sql, args.format, args.root) == ("SELECT 1", "table", None)


@pytest.mark.parametrize("argv", [[], ["query"], ["query", "SELECT 1", "--format", "xml"], ["nope"]])
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage: lakehouse" in capsys.readouterr().err
