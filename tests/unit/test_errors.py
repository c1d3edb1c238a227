"""Errors carry their context, render it in the message and survive pickling across a Ray worker boundary."""

from __future__ import annotations

import copy
import pickle

import pytest

from lakehouse.errors import (
    CommitConflict,
    ConfigError,
    LakehouseError,
    QueryError,
    SchemaMismatch,
    SourceFileError,
    TableError,
    TransientStorageError,
)

ALL = [LakehouseError, ConfigError, SourceFileError, SchemaMismatch, CommitConflict, TableError,
       TransientStorageError, QueryError]


@pytest.mark.parametrize("cls", ALL)
def test_pickle_round_trip_keeps_type_message_and_context(cls: type[LakehouseError]) -> None:
    # given an error about a table and a path
    err = cls("missing column 'o_comment'", table="bronze.orders", path="raw/orders/1995-03/part-0.csv")

    # when it crosses a process boundary
    back = pickle.loads(pickle.dumps(err))

    # then it is the same error with the same context and message
    assert type(back) is cls
    assert back.table == "bronze.orders"
    assert back.path == "raw/orders/1995-03/part-0.csv"
    assert back.message == "missing column 'o_comment'"
    assert str(back) == str(err) == "bronze.orders (raw/orders/1995-03/part-0.csv): missing column 'o_comment'"
    assert back.retryable is cls.retryable
    assert isinstance(back, LakehouseError)


def test_retryable_only_where_a_retry_can_help() -> None:
    assert CommitConflict("x").retryable is True
    assert TransientStorageError("x").retryable is True
    for cls in (LakehouseError, ConfigError, SourceFileError, SchemaMismatch, TableError, QueryError):
        assert cls("x").retryable is False


def test_message_names_the_table_and_the_path_else_the_source() -> None:
    assert str(TableError("boom", table="silver.orders", path="p")) == "silver.orders (p): boom"
    assert str(SourceFileError("unreadable", path="raw/x.csv", source="x")) == "raw/x.csv: unreadable"
    assert str(SourceFileError("unreadable", source="orders")) == "orders: unreadable"
    assert str(ConfigError("bad setting")) == "bad setting"


def test_about_names_the_table_once_and_survives_pickling() -> None:
    # given an error raised by a worker that only knew the file
    err = SourceFileError("empty file", path="raw/orders/a.csv")

    # when the runner names the table, twice (the second name must not win)
    err.about("bronze.orders").about("bronze.other")
    back = pickle.loads(pickle.dumps(err))

    # then the first table name sticks, in the context and the message, also after pickling
    assert back.table == "bronze.orders"
    assert back.path == "raw/orders/a.csv"
    assert str(back) == "bronze.orders (raw/orders/a.csv): empty file"
    assert back.args == ("bronze.orders (raw/orders/a.csv): empty file",)


def test_copy_and_missing_attributes() -> None:
    err = CommitConflict("concurrent commit after version 3", table="silver.orders", version=3)
    clone = copy.deepcopy(err)
    assert (clone.table, clone.version, clone.message) == ("silver.orders", 3, err.message)
    with pytest.raises(AttributeError):
        _ = err.path


def test_errors_raise_and_catch_as_the_root() -> None:
    with pytest.raises(LakehouseError) as info:
        raise SchemaMismatch("missing column 'x'", table="bronze.t", path="raw/t/a.csv", column="x")
    assert info.value.column == "x"
