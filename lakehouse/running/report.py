"""The quality report of a run, as markdown: what the Prefect flow publishes as an artifact (and what a run's
record in ``_meta`` can be rendered as anywhere else)."""

from __future__ import annotations

from lakehouse.errors import LakehouseError
from lakehouse.running.context import RunContext, StageResult


def quality_report(ctx: RunContext, results: list[StageResult]) -> str:
    """Markdown: the checks that failed and what they found, every check with its verdict, drift findings, the hot
    keys of gold aggregates, and what each table quarantined or rejected, with sample rows."""
    lines = [f"# Quality report: run `{ctx.run_id}`", ""]
    evaluated = [c for r in results for c in r.checks]
    failed = [c for c in evaluated if not c.passed]
    stopped = [c for c in failed if c.action == "fail"]
    if evaluated:
        lines += [f"**{len(evaluated) - len(failed)} of {len(evaluated)} checks passed**; {len(stopped)} failed and "
                  f"stopped the run, {len(failed) - len(stopped)} failed as warnings.", ""]
    else:
        lines += ["No quality checks are configured for these tables.", ""]
    if failed:
        lines += ["## Failed checks", ""]
        lines += [f"- **{c.table}** `{c.check}` ({c.action}): {_md(c.message)}" for c in failed]
        lines.append("")
    if evaluated:
        lines += ["## All checks", "", "| table | check | observed | threshold | action | result |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {c.table} | {_md(c.check)} | {c.observed:.4g} | {c.threshold:.4g} | {c.action} | "
                  f"{'passed' if c.passed else '**FAILED**'} |" for c in evaluated]
        lines.append("")
    drift = [c for c in evaluated if c.check.startswith("drift_")]
    if drift:
        lines += ["## Drift against the previous month", ""]
        lines += [f"- {c.table} `{c.check}`: {'ok' if c.passed else '**drifted**'}, {_md(c.message)}" for c in drift]
        lines.append("")
    hot = [h for r in results for h in r.hot_keys]
    if hot:
        lines += ["## Hot keys", "", "Keys above the hot share of a gold aggregate's rows (`_meta.hot_keys`).", "",
                  "| table | key | rows | share | rows at the final step | salted |", "|---|---|---|---|---|---|"]
        lines += [f"| {h.table} | {_md(h.label)} | {h.rows} | {h.share:.1%} | "
                  f"{'' if h.final_rows is None else h.final_rows} | {_md(h.note)} |" for h in hot]
        lines.append("")
    held = [r for r in results if r.rows_quarantined or r.files_rejected]
    lines += ["## Quarantine and rejected files", ""]
    if held:
        lines += ["| table | rows in | rows quarantined | files rejected |", "|---|---|---|---|"]
        lines += [f"| {r.table} | {r.rows_in} | {r.rows_quarantined} | {r.files_rejected} |" for r in held]
        lines.append("")
        # bronze.orders and silver.orders quarantine into one table, quarantine.orders
        for name in dict.fromkeys(r.quarantine_name for r in held if r.rows_quarantined):
            lines += _quarantine_sample(ctx, name)
        lines += ["Rows: `lakehouse query \"SELECT * FROM quarantine.<table> WHERE _run_id = "
                  f"'{ctx.run_id}'\"`; files: `_meta.rejected_files`."]
    else:
        lines.append("Nothing was quarantined or rejected.")
    return "\n".join(lines)


def _quarantine_sample(ctx: RunContext, table: str, limit: int = 5) -> list[str]:
    """Up to ``limit`` of the rows this run quarantined for ``table``, as a markdown table."""
    sql = (f"SELECT stage, \"check\", \"column\", value, _source_file, _source_line FROM quarantine.{table} "
           f"WHERE _run_id = '{ctx.run_id}' ORDER BY _source_file, _source_line LIMIT {limit}")
    from lakehouse.ops.query import query  # DuckDB, loaded only when a run quarantined rows

    try:
        rows = query(ctx.storage, sql).to_pylist()
    except LakehouseError:
        return []
    out = [f"Sample of quarantine.{table}:", "", "| stage | check | column | value | file | line |",
           "|---|---|---|---|---|---|"]
    out += [f"| {r['stage']} | {_md(r['check'])} | {r['column'] or ''} | {_md(str(r['value']))} | "
            f"{r['_source_file']} | {r['_source_line']} |" for r in rows]
    return [*out, ""]


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
