"""Validation: the one home of ``pandera``. Casts bronze strings to a model's types and splits valid from rejected rows.

A row is rejected when a value does not parse to its column's type (check ``dtype(<type>)``) or when a rule of the
model whose action is ``quarantine`` (the default) or ``fail`` fails. Rejected rows keep their original string values,
so nothing is lost and they can be replayed. A rule whose action is ``warn`` keeps the row and reports it.

Actions are the model's: ``class Config: metadata = {"actions": {"usual_discount": "warn"}}``, keyed by check name
(``less_than_or_equal_to`` for ``Field(le=...)``) or ``column.check``. A value that does not parse can only be
quarantined or fail (there is nothing typed to keep). The model's ``metadata["gates"]`` are its table checks (see
``lakehouse.quality.checks``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pandera.polars as pa
import polars as pl
from pandera.errors import SchemaErrors

from lakehouse.errors import ConfigError

ROW_ID = "__row"
# Timestamps as landed: ISO 8601 with a "T" or a space, any fraction of a second, an offset ("Z", "+02:00") or none
TIMESTAMP_FORMATS = ("%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f",
                     "%Y-%m-%d %H:%M:%S%.f")
ACTIONS = ("warn", "quarantine", "fail")


@dataclass(frozen=True)
class Split:
    """The outcome of validating a batch: typed valid rows, and one record per rejected row."""

    valid: pl.DataFrame  # typed; includes rows that failed only ``warn`` rules
    rejected: pl.DataFrame  # ROW_ID, check, column, value, failures (JSON list of every failed check), action
    warned: pl.DataFrame  # ROW_ID, check, column, value: each ``warn`` failure of a kept row

    @property
    def failing(self) -> pl.DataFrame:
        """Rejected rows that failed a rule whose action is ``fail``."""
        return self.rejected.filter(pl.col("action") == "fail")


def model_metadata(model: type[pa.DataFrameModel]) -> dict[str, Any]:
    """The model's ``Config.metadata`` (``actions`` for row rules, ``gates`` for table checks)."""
    return dict(getattr(model.__config__, "metadata", None) or {})


def row_actions(model: type[pa.DataFrameModel]) -> dict[str, str]:
    """Check name (or ``column.check``) -> action, from the model; unnamed checks quarantine."""
    actions = dict(model_metadata(model).get("actions") or {})
    for check, action in actions.items():
        if action not in ACTIONS:
            raise ConfigError(f"model {model.__name__}: action {action!r} of check {check!r} is not one of "
                              f"{', '.join(ACTIONS)}")
    return actions


def check_names(model: type[pa.DataFrameModel]) -> dict[str, set[str]]:
    """Column -> the names of the row checks on it (``dtype`` and ``not_nullable`` included)."""
    names = {}
    for column, col in model.to_schema().columns.items():
        found = {"dtype", "not_nullable"} | {c.name for c in col.checks if c.name}
        names[column] = found
    return names


def validate_actions(model: type[pa.DataFrameModel]) -> None:
    """Every key of the model's ``actions`` must name a check it has (``check`` or ``column.check``); a bare name of
    a check on several columns (``less_than_or_equal_to``) must say which column, except ``dtype`` and
    ``not_nullable``, which mean every column."""
    names = check_names(model)
    for key in row_actions(model):
        column, _, check = key.rpartition(".")
        if column:
            ok = check in names.get(column, set())
        else:
            on = [c for c, found in names.items() if check in found]
            ok = bool(on) and (len(on) == 1 or check in ("dtype", "not_nullable"))
            if len(on) > 1 and not ok:
                raise ConfigError(f"model {model.__name__}: action key {key!r} is a check on several columns "
                                  f"({', '.join(on)}); write column.{check}")
        if not ok:
            raise ConfigError(f"model {model.__name__}: action key {key!r} names no check of the model")


def _action(actions: dict[str, str], check: str, column: str) -> str:
    name = check.split("(")[0]
    found = actions.get(f"{column}.{name}") or actions.get(name) or "quarantine"
    if name == "dtype" and found == "warn":
        return "quarantine"
    return found


def model_dtypes(model: type[pa.DataFrameModel]) -> dict[str, pl.DataType]:
    """Column name -> polars dtype, in model order."""
    return {name: col.dtype.type for name, col in model.to_schema().columns.items()}


@dataclass(frozen=True)
class RowCheck:
    """A row rule that is not the model's (it depends on the run, e.g. how late a row may arrive): rows for which
    ``failing`` (an expression over the typed columns) is true are rejected with ``name`` on ``column``."""

    name: str
    column: str
    failing: pl.Expr


def split_valid(
    strings: pl.DataFrame, model: type[pa.DataFrameModel], extra: tuple[RowCheck, ...] = (),
    exempt: pl.DataFrame | None = None,
) -> Split:
    """Cast the model's columns of ``strings`` (other columns pass through) and validate them with the model (and
    ``extra`` checks). ``exempt`` (``ROW_ID``: a row of ``strings``, ``column``) are cells no check applies to
    (a value known only later, e.g. a change event's column that keeps its previous value)."""
    dtypes = model_dtypes(model)
    df = strings.with_row_index(ROW_ID)
    typed = cast_texts(df, dtypes)
    failures = [_cast_failures(df, typed, dtypes), _rule_failures(typed.select(ROW_ID, *dtypes), model)]
    failures += [_extra_failures(typed, check) for check in extra]
    found = [f.with_columns(pl.col(ROW_ID).cast(pl.UInt32)) for f in failures if f.height]
    every = pl.concat(found) if found else _empty_failures()
    if exempt is not None and exempt.height and every.height:
        every = every.join(exempt.select(pl.col(ROW_ID).cast(pl.UInt32), "column"), on=[ROW_ID, "column"], how="anti")
    actions = row_actions(model)
    # One lookup per distinct (check, column), joined back: a whole column of bad values is one lookup, not millions.
    pairs = every.select("check", "column").unique()
    pairs = pairs.with_columns(
        pl.Series("action", [_action(actions, c, col or "") for c, col in pairs.iter_rows()], dtype=pl.String)
    )
    every = every.join(pairs, on=["check", "column"], how="left", nulls_equal=True)
    blocking = every.filter(pl.col("action") != "warn").select(ROW_ID).unique()
    # A rejected row reports a rule that rejects it first; its failures list every rule it failed.
    rows = every.join(blocking, on=ROW_ID, how="semi").with_columns(
        pl.col("action").replace_strict({"fail": 0, "quarantine": 1, "warn": 2}, return_dtype=pl.Int8).alias("__rank")
    ).sort(ROW_ID, "__rank", maintain_order=True)
    rejected = _per_row(rows)
    warned = every.filter(pl.col("action") == "warn").join(blocking, on=ROW_ID, how="anti").drop("action")
    valid = typed.join(rejected.select(ROW_ID), on=ROW_ID, how="anti").drop(ROW_ID)
    return Split(valid=valid, rejected=rejected, warned=warned)


def cast_texts(df: pl.DataFrame, dtypes: dict[str, pl.DataType]) -> pl.DataFrame:
    """``df`` with its text columns in ``dtypes`` cast as :func:`cast_text` casts them, in one pass where every value
    parses as landed; a column with a value that does not (padded with blanks, blank, or bad) is cast again from
    trimmed text. (Trimming copies every value: it was a third of the cost of checking a clean file.)"""
    cast = [c for c, t in dtypes.items() if t != pl.String]
    typed = df.with_columns(_parse(pl.col(c), dtypes[c]).alias(c) for c in cast)
    again = [c for c in cast if (df.get_column(c).is_not_null() & typed.get_column(c).is_null()).any()]
    if not again:
        return typed
    return typed.with_columns(df.select(cast_text(c, dtypes[c]) for c in again).get_columns())


def cast_text(column: str, dtype: pl.DataType) -> pl.Expr:
    """Text column ``column`` as ``dtype``; blank or unparseable text becomes null (a failure the caller reports)."""
    if dtype == pl.String:
        return pl.col(column)
    col = pl.col(column).str.strip_chars()
    return _parse(pl.when(col == "").then(None).otherwise(col), dtype).alias(column)


def _parse(col: pl.Expr, dtype: pl.DataType) -> pl.Expr:
    """Text as ``dtype`` (not String), null where it does not parse."""
    if dtype == pl.Date:
        return col.str.to_date("%Y-%m-%d", strict=False)
    if isinstance(dtype, pl.Datetime):
        zone, unit = dtype.time_zone, dtype.time_unit or "us"
        return pl.coalesce(
            col.str.to_datetime(f, time_unit=unit, time_zone=zone, strict=False)
            for f in TIMESTAMP_FORMATS if zone or not f.endswith("z")
        )
    if dtype == pl.Time:
        return pl.coalesce(col.str.to_time(f, strict=False) for f in ("%H:%M:%S%.f", "%H:%M:%S", "%H:%M"))
    return col.cast(dtype, strict=False)


def _cast_failures(raw: pl.DataFrame, typed: pl.DataFrame, dtypes: dict[str, pl.DataType]) -> pl.DataFrame:
    frames = []
    for column, dtype in dtypes.items():
        if dtype == pl.String:
            continue
        landed = raw.get_column(column)
        # not null as landed but null typed (few, in a clean file none): bad unless blank
        suspect = landed.is_not_null() & typed.get_column(column).is_null()
        if not suspect.any():
            continue
        original = landed.filter(suspect).str.strip_chars()
        bad = original != ""
        if bad.any():
            frames.append(
                pl.DataFrame(
                    {
                        ROW_ID: raw.get_column(ROW_ID).filter(suspect).filter(bad),
                        "check": f"dtype('{dtype}')",
                        "column": column,
                        "value": original.filter(bad),
                    }
                )
            )
    return pl.concat(frames) if frames else _empty_failures()


def _rule_failures(typed: pl.DataFrame, model: type[pa.DataFrameModel]) -> pl.DataFrame:
    try:
        model.validate(typed, lazy=True)
    except SchemaErrors as e:
        cases = e.failure_cases
        if cases.get_column("index").null_count():
            # A failure without a row index is about the whole batch (a missing column, a wrong dtype).
            raise
        ids = typed.get_column(ROW_ID)
        return pl.DataFrame(
            {
                ROW_ID: ids.gather(cases.get_column("index").cast(pl.Int64)),
                "check": cases.get_column("check").cast(pl.String),
                "column": cases.get_column("column").cast(pl.String),
                "value": cases.get_column("failure_case").cast(pl.String),
            }
        )
    return _empty_failures()


def output_failures(df: pl.DataFrame, model: type[pa.DataFrameModel]) -> pl.DataFrame | None:
    """The rule failures of typed rows ``df`` against ``model`` (``check``, ``column``, ``value``), or None when it
    passes: how a gold transform's output is held to its table's model."""
    try:
        model.validate(df, lazy=True)
    except SchemaErrors as e:
        cases = e.failure_cases
        return pl.DataFrame({
            "check": cases.get_column("check").cast(pl.String),
            "column": cases.get_column("column").cast(pl.String),
            "value": cases.get_column("failure_case").cast(pl.String),
        })
    return None


def _extra_failures(typed: pl.DataFrame, check: RowCheck) -> pl.DataFrame:
    bad = typed.filter(check.failing.fill_null(False))
    return pl.DataFrame(
        {
            ROW_ID: bad.get_column(ROW_ID),
            "check": pl.Series([check.name] * bad.height, dtype=pl.String),
            "column": pl.Series([check.column] * bad.height, dtype=pl.String),
            "value": bad.get_column(check.column).cast(pl.String),
        }
    )


def _empty_failures() -> pl.DataFrame:
    return pl.DataFrame(
        schema={ROW_ID: pl.UInt32, "check": pl.String, "column": pl.String, "value": pl.String}
    )


def _per_row(failures: pl.DataFrame) -> pl.DataFrame:
    """One record per rejected row: its first failure, plus every failure as JSON."""
    return (
        failures.with_columns(pl.col(ROW_ID).cast(pl.UInt32))
        .group_by(ROW_ID, maintain_order=True)
        .agg(
            pl.col("check").first(),
            pl.col("column").first(),
            pl.col("value").first(),
            pl.struct("check", "column", "value").alias("all"),
            pl.when((pl.col("action") == "fail").any()).then(pl.lit("fail")).otherwise(pl.lit("quarantine"))
            .first().alias("action"),
        )
        .with_columns(pl.col("all").map_elements(_failures_json, return_dtype=pl.String).alias("failures"))
        .drop("all")
        .sort(ROW_ID)
    )


def _failures_json(items: Any) -> str:
    return json.dumps(list(items))
