"""Typed errors: one root, each carrying the table, path or version it is about.

Every error says whether retrying can help (``retryable``); Prefect retries only those. Errors cross the Ray
worker boundary, so each one pickles with its context intact (``__reduce__`` rebuilds it from its fields).
"""

from __future__ import annotations

from typing import Any


class LakehouseError(Exception):
    """Root of every error the engine raises on purpose."""

    retryable: bool = False

    def __init__(self, message: str, **context: Any) -> None:
        self.context = context
        self.message = message
        super().__init__(self._render())

    def _render(self) -> str:
        table, path = self.context.get("table"), self.context.get("path")
        where = table or path or self.context.get("source")
        if table and path:
            where = f"{table} ({path})"
        return f"{where}: {self.message}" if where else self.message

    def about(self, table: str) -> LakehouseError:
        """Name the table this error is about, unless it already names one."""
        if not self.context.get("table"):
            self.context["table"] = table
            self.args = (self._render(),)
        return self

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self.message, self.context))

    def __getattr__(self, name: str) -> Any:
        context = self.__dict__.get("context", {})
        if name in context:
            return context[name]
        raise AttributeError(name)


def _rebuild(cls: type[LakehouseError], message: str, context: dict[str, Any]) -> LakehouseError:
    return cls(message, **context)


class ConfigError(LakehouseError):
    """Settings or a pipeline declaration that cannot work."""


class SourceFileError(LakehouseError):
    """A landed file that cannot be read as its format says (context: path, source)."""


class SchemaMismatch(LakehouseError):
    """Columns of a landed file or batch do not match the table (context: table, path, column)."""


class CommitConflict(LakehouseError):
    """Another writer committed to the table between our plan and our commit (context: table, version)."""

    retryable = True


class TableError(LakehouseError):
    """A Delta table could not be read or written (context: table)."""


class TransientStorageError(LakehouseError):
    """The storage backend failed in a way a retry may cure (context: path)."""

    retryable = True


class QualityGateFailed(LakehouseError):
    """A table-level quality check failed before the table's commit (context: table, check, checks)."""


class TransformError(LakehouseError):
    """A gold transform returned what its table's model does not allow, or rows it may not write (context: table,
    column, check)."""


class StageError(LakehouseError):
    """A stage failed for a reason the engine did not anticipate: a worker that kept dying, a bug (context: table).
    The original exception is its ``__cause__``."""


class QueryError(LakehouseError):
    """A query over the tables failed (bad SQL or an unknown table)."""
