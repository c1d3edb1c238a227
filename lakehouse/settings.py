"""Settings: one frozen object, built at the edge (CLI, flow entry, test fixture) and passed down.

Library code never reads the environment; :func:`settings_from_env` is the one place that does, and only the edges
call it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from lakehouse.errors import ConfigError


@dataclass(frozen=True)
class RaySettings:
    """How to reach Ray: a local instance we start, or ``address`` of a running cluster."""

    address: str | None = None
    num_cpus: int = 2
    object_store_bytes: int = 1 << 30
    temp_dir: str | None = None
    # Seconds to wait for a cluster at ``address`` to answer before the run fails naming it (Ray retries for minutes).
    connect_timeout: float = 30.0
    # Directories the workers import from (the project's), besides what Ray gives them (the working directory).
    code_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class Settings:
    """Everything a run needs to know about where data lives and how to process it.

    ``root`` is a local path or ``s3://bucket/prefix``; ``storage_options`` are the deltalake-style options
    (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ...) used for every table and file on that root. They hold
    credentials, so they are left out of the object's repr (a settings object in a log line or a traceback shows no
    secret).
    """

    root: str
    storage_options: Mapping[str, str] = field(default_factory=dict, repr=False)
    ray: RaySettings = field(default_factory=RaySettings)
    # The pipeline to run: a name (from ``pipelines``, or an example: tpch, events), ``module:attr`` or a .py path.
    pipeline: str = "tpch"
    # Names of the project's pipelines -> their references (``[pipelines]`` of lakehouse.toml).
    pipelines: Mapping[str, str] = field(default_factory=dict)
    # The project's directory: pipeline files and their models are imported from it (None: the working directory).
    project_dir: str | None = None
    # Rows per Parquet file written by workers: ~1M rows keeps files in the 32-128 MB range for TPC-H.
    target_file_rows: int = 1_000_000
    # The most rows broadcast to every worker for a join (the revenue join broadcasts orders in batches of this).
    broadcast_max_rows: int = 2_000_000
    # Input rows per task of an aggregation's final step (from the log): more rows spread it over more tasks, each
    # finishing one hash bucket of the keys.
    final_task_rows: int = 4_000_000
    # Hot keys of an aggregation's final step, per gold table ("*" for all; lakehouse.gold.salting): the share of the
    # input's rows above which a key is hot (recorded in _meta.hot_keys; default 0.02), and over how many tasks a hot
    # key is salted (default: from the measured imbalance, about half a task's rows a slice; 0 turns salting and the
    # placement of heavy keys off: plain hashing).
    hot_key_share: Mapping[str, float] = field(default_factory=dict)
    salts: Mapping[str, int] = field(default_factory=dict)
    # Stages that may run at once (independent ones: different tables, none reading what another writes); 0 (auto):
    # one at a time on a cluster of fewer than 8 CPUs (a stage keeps a small cluster busy), else one per 8 CPUs, at
    # most 4 (lakehouse.running.runner.parallelism).
    parallel_stages: int = 0
    # Files no version refers to are deleted once older than this (longer than the longest run: a younger one may
    # belong to a run that has not committed yet); see maintenance.sweep.
    orphan_retention_seconds: float = 24 * 3600.0
    # Seconds for the S3 endpoint of an s3:// root (AWS_ENDPOINT_URL) to answer when a run starts, before it fails
    # naming the endpoint (the S3 clients alone retry a silent endpoint for minutes).
    storage_timeout: float = 30.0
    # An S3 store whose PUTs ignore If-None-Match (so concurrent commits can overwrite each other) is refused when a
    # run starts; true lets it be written to anyway, for a store only one writer ever uses.
    allow_unsafe_store: bool = False
    # Late data, per time-partitioned silver table ("*" for all), over the pipeline's Silver.lookback: a landed row
    # for a partition more than N periods (days, months or years: the table's grain) before the table's newest goes
    # to quarantine (check late_arrival) instead of rewriting that closed partition; a backfill of its month takes it
    # in. A table with no lookback takes every late row (runs select work by landed file, so nothing late is ever
    # missed). N must cover the table's normal spread: TPC-H lines ship up to 4 months after the order.
    lookback: Mapping[str, int] = field(default_factory=dict)
    # A landed file that cannot be read at all (corrupt, empty, binary, an unclosed quote): "reject" records it in
    # _meta.rejected_files and goes on with the rest; "fail" fails the run naming the file, committing nothing.
    bad_files: Literal["reject", "fail"] = "reject"
    # Schema drift, per source: a landed file with a column the table does not have fails the run naming the file and
    # the column ("fail", the default), or "evolve" adds it to bronze and silver (null for earlier rows), as dbt's
    # append_new_columns. A file missing one of the table's columns always fails.
    new_columns: Mapping[str, Literal["evolve", "fail"]] = field(default_factory=dict)
    # Quality gate, per silver table ("*" for every table): the largest share of a batch's rows that may go to
    # quarantine; above it the run fails before the table commits. A table without one has no such gate.
    max_quarantined_share: Mapping[str, float] = field(default_factory=dict)
    # More gates, per silver table ("*" for every table), over the model's own (see lakehouse.quality.checks.Gates):
    # the range of valid rows an incremental batch may bring (None: unbounded), the freshness SLA in days (newest event
    # date vs the run's logical date), and the tables whose source must deliver every run (no new rows fails
    # empty_batch).
    batch_rows: Mapping[str, tuple[int | None, int | None]] = field(default_factory=dict)
    freshness_days: Mapping[str, float] = field(default_factory=dict)
    expect_delivery: tuple[str, ...] = ()
    # Ingest lag, per source ("*" for every source): the longest a landed file may wait for ingest (seconds, measured
    # at the start of a run) before the ingest_lag check fails.
    max_ingest_lag_seconds: Mapping[str, float] = field(default_factory=dict)
    # A check's action other than its default (lakehouse.quality.checks.DEFAULT_ACTIONS): "freshness" or
    # "orders.freshness" -> "fail" or "warn".
    check_actions: Mapping[str, Literal["warn", "fail"]] = field(default_factory=dict)

    def with_root(self, root: str) -> Settings:
        return replace(self, root=root)

    def __hash__(self) -> int:
        return hash((self.root, tuple(sorted(self.storage_options.items())), self.ray, self.pipeline))


# The deltalake-style storage options of an s3:// root, as the standard AWS variables name them.
S3_KEYS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
           "AWS_ALLOW_HTTP")


CONFIG_FILE = "lakehouse.toml"


def settings_from_env(
    root: str | None = None, env: Mapping[str, str] | None = None, *, project: str | None = None,
    credentials: Mapping[str, str] | None = None, **overrides: Any
) -> Settings:
    """Build settings at an edge: the project's configuration (``lakehouse.toml``, or ``[tool.lakehouse]`` in a
    ``pyproject.toml``, found from ``project`` or the working directory upwards), then ``LAKEHOUSE_*``,
    ``RAY_ADDRESS`` and ``AWS_*`` variables over it, then ``overrides`` (command-line flags) over both.

    An ``s3://`` root's credentials come from the standard AWS variables (``AWS_ACCESS_KEY_ID``, ... or a profile,
    see :func:`s3_options`); ``credentials`` (storage options read from a secret store, e.g. a Prefect block) are
    taken over them."""
    env = os.environ if env is None else env
    found = find_project(project or os.getcwd())
    project_dir, config = found if found else (None, {})
    values, ray_values, config_root = _config_values(config, project_dir)
    values.update(_env_values(env))
    values.update(overrides)
    if project_dir is not None:
        values.setdefault("project_dir", str(project_dir))
    given = root or env.get("LAKEHOUSE_ROOT")
    root = given or config_root or "lakehouse-data"
    if "://" not in root:  # a root from the configuration (or the default) is the project's
        root = os.path.abspath(root if given or project_dir is None else os.path.join(project_dir, root))
    storage = s3_options(env, credentials) if root.startswith("s3://") else {}
    ray = RaySettings(
        address=env.get("RAY_ADDRESS") or ray_values.get("address") or None,
        num_cpus=int(env.get("LAKEHOUSE_RAY_CPUS") or ray_values.get("num_cpus", 2)),
        object_store_bytes=int(env.get("LAKEHOUSE_RAY_OBJECT_STORE_BYTES") or
                               ray_values.get("object_store_bytes", 1 << 30)),
        temp_dir=env.get("LAKEHOUSE_RAY_TEMP_DIR") or ray_values.get("temp_dir") or None,
        connect_timeout=float(env.get("LAKEHOUSE_RAY_CONNECT_TIMEOUT") or ray_values.get("connect_timeout", 30.0)),
        # Ray workers import the project's pipeline and models as this process does
        code_paths=tuple(p for p in [str(project_dir or ""), *env.get("PYTHONPATH", "").split(os.pathsep)] if p)
        if project_dir else (),
    )
    return Settings(root=root, storage_options=storage, ray=ray, **values)


def s3_options(env: Mapping[str, str], credentials: Mapping[str, str] | None = None) -> dict[str, str]:
    """The storage options of an ``s3://`` root from the standard AWS variables, resolved here once so every process
    of the run (Ray workers on other machines included) uses the same ones:

    - ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (``AWS_SESSION_TOKEN`` for temporary ones), ``AWS_REGION`` (or
      ``AWS_DEFAULT_REGION``), ``AWS_ENDPOINT_URL`` for a store other than AWS S3;
    - or, without keys, ``AWS_PROFILE``: the profile's credentials (as botocore resolves them: the shared credentials
      file, an assumed role, SSO; ``AWS_SHARED_CREDENTIALS_FILE`` and ``AWS_CONFIG_FILE`` are honoured), region and
      ``endpoint_url`` from ``~/.aws``;
    - ``credentials`` over both (keys as above, from a secret store).

    An ``http://`` endpoint allows plain HTTP (``AWS_ALLOW_HTTP=true``), as the URL says. Temporary credentials are
    not refreshed during a run."""
    found = {k: env[k] for k in S3_KEYS if env.get(k)}
    if "AWS_REGION" not in found and env.get("AWS_DEFAULT_REGION"):
        found["AWS_REGION"] = env["AWS_DEFAULT_REGION"]
    if env.get("AWS_PROFILE") and "AWS_ACCESS_KEY_ID" not in found and not (credentials or {}).get(
            "AWS_ACCESS_KEY_ID"):
        found = {**profile_options(env["AWS_PROFILE"], env), **found}
    found.update({k: v for k, v in (credentials or {}).items() if v})
    unknown = sorted(set(found) - set(S3_KEYS))
    if unknown:
        raise ConfigError(f"unknown S3 credential keys {unknown} (known: {', '.join(S3_KEYS)})")
    if found.get("AWS_ENDPOINT_URL", "").startswith("http://"):
        found.setdefault("AWS_ALLOW_HTTP", "true")
    return found


def profile_options(name: str, env: Mapping[str, str]) -> dict[str, str]:
    """The credentials, region and endpoint of the AWS profile ``name``, as botocore resolves them (``env``: where
    ``AWS_SHARED_CREDENTIALS_FILE`` and ``AWS_CONFIG_FILE`` may point elsewhere than ``~/.aws``)."""
    import botocore.exceptions
    import botocore.session

    session = botocore.session.Session(profile=name)
    for variable, key in (("credentials_file", "AWS_SHARED_CREDENTIALS_FILE"), ("config_file", "AWS_CONFIG_FILE")):
        if env.get(key):
            session.set_config_variable(variable, env[key])
    try:
        credentials = session.get_credentials()
        region = session.get_config_variable("region")
        endpoint = session.get_scoped_config().get("endpoint_url")
    except botocore.exceptions.BotoCoreError as e:  # an unknown profile, an expired SSO session: says which
        raise ConfigError(f"AWS_PROFILE={name}: {e}") from e
    if credentials is None:
        raise ConfigError(f"AWS_PROFILE={name}: the profile has no credentials (see aws configure --profile {name})")
    frozen = credentials.get_frozen_credentials()
    found = {"AWS_ACCESS_KEY_ID": frozen.access_key, "AWS_SECRET_ACCESS_KEY": frozen.secret_key,
             "AWS_SESSION_TOKEN": frozen.token or "", "AWS_REGION": region or "", "AWS_ENDPOINT_URL": endpoint or ""}
    return {k: v for k, v in found.items() if v}


def find_project(start: str) -> tuple[Path, dict[str, Any]] | None:
    """The nearest directory from ``start`` upwards with a ``lakehouse.toml`` (or a ``pyproject.toml`` with a
    ``[tool.lakehouse]`` table), and that configuration."""
    here = Path(start).resolve()
    for d in [here, *here.parents]:
        if (d / CONFIG_FILE).is_file():
            return d, _toml(d / CONFIG_FILE)
        if (d / "pyproject.toml").is_file():
            tool = _toml(d / "pyproject.toml").get("tool", {})
            if isinstance(tool, dict) and isinstance(tool.get("lakehouse"), dict):
                return d, tool["lakehouse"]
    return None


def _toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: cannot read the configuration: {e}") from e


# Configuration keys: the name in [settings] -> how its value is checked and converted.
_TABLES = "a table of name = value"


def _config_values(config: Mapping[str, Any], project_dir: Path | None) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Settings fields from a project's configuration (its ``[settings]`` and ``[ray]`` tables, its ``root``,
    ``pipeline`` and ``[pipelines]``), checked: an unknown key or a value of the wrong kind names the file's key."""
    where = f"{project_dir}/{CONFIG_FILE}" if project_dir else CONFIG_FILE
    known = {"root", "pipeline", "pipelines", "settings", "ray"}
    for key in config:
        if key not in known:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(known))})")
    values: dict[str, Any] = {}
    if "pipeline" in config:
        values["pipeline"] = str(config["pipeline"])
    if "pipelines" in config:
        values["pipelines"] = {str(k): str(v) for k, v in _table(config["pipelines"], where, "pipelines").items()}
    for key, value in _table(config.get("settings", {}), where, "settings").items():
        values[key] = _setting(key, value, f"{where}: settings.{key}")
    ray = _table(config.get("ray", {}), where, "ray")
    for key in ray:
        if key not in ("address", "num_cpus", "object_store_bytes", "temp_dir", "connect_timeout"):
            raise ConfigError(f"{where}: unknown key ray.{key}")
    return values, dict(ray), str(config.get("root") or "")


def _table(value: Any, where: str, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: {key} must be a table, not {value!r}")
    return value


def _setting(key: str, value: Any, where: str) -> Any:
    def per_name(check: Callable[[Any], bool], convert: Callable[[Any], Any], what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be {_TABLES} (e.g. {{ orders = ... }})")
        for name, v in value.items():
            if not check(v):
                raise ConfigError(f"{where}.{name} must be {what}, not {v!r}")
        return {str(k): convert(v) for k, v in value.items()}

    def number(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and v >= 0

    if key == "lookback":
        return per_name(lambda v: isinstance(v, int) and v >= 0, int, "a whole number of periods")
    if key in ("max_quarantined_share", "hot_key_share"):
        return per_name(lambda v: number(v) and v <= 1, float, "a share from 0 to 1")
    if key == "salts":
        return per_name(lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 64, int,
                        "a whole number of tasks from 0 (off) to 64")
    if key in ("freshness_days", "max_ingest_lag_seconds"):
        return per_name(number, float, "a number")
    if key == "batch_rows":
        return per_name(lambda v: (isinstance(v, str) and _is_range(v)) or (isinstance(v, list) and len(v) == 2),
                        lambda v: _range(v) if isinstance(v, str) else (v[0], v[1]), "\"low..high\" or [low, high]")
    if key == "check_actions":
        return per_name(lambda v: v in ("warn", "fail"), str, "warn or fail")
    if key == "new_columns":
        return per_name(lambda v: v in ("evolve", "fail"), str, "evolve or fail")
    if key == "expect_delivery":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where} must be a list of table names")
        return tuple(value)
    if key == "bad_files":
        if value not in ("reject", "fail"):
            raise ConfigError(f"{where} must be reject or fail, not {value!r}")
        return value
    if key == "parallel_stages":
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 64:
            raise ConfigError(f"{where} must be a whole number of stages from 0 (auto) to 64, not {value!r}")
        return value
    if key in ("target_file_rows", "broadcast_max_rows", "final_task_rows"):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where} must be a whole number of rows, not {value!r}")
        return value
    if key in ("orphan_retention_seconds", "storage_timeout"):
        if not number(value):
            raise ConfigError(f"{where} must be a number of seconds")
        return float(value)
    if key == "allow_unsafe_store":
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, not {value!r}")
        return value
    raise ConfigError(f"{where}: unknown setting (known: lookback, max_quarantined_share, freshness_days, "
                      "max_ingest_lag_seconds, batch_rows, check_actions, new_columns, expect_delivery, bad_files, "
                      "target_file_rows, broadcast_max_rows, final_task_rows, hot_key_share, salts, parallel_stages, "
                      "orphan_retention_seconds, storage_timeout, allow_unsafe_store)")


def _env_values(env: Mapping[str, str]) -> dict[str, Any]:
    """Settings fields from ``LAKEHOUSE_*`` variables (each one over the configuration's)."""
    values: dict[str, Any] = {}
    if env.get("LAKEHOUSE_PIPELINE"):
        values["pipeline"] = env["LAKEHOUSE_PIPELINE"]
    if env.get("LAKEHOUSE_BAD_FILES"):
        policy = env["LAKEHOUSE_BAD_FILES"]
        if policy not in ("reject", "fail"):
            raise ConfigError(f"LAKEHOUSE_BAD_FILES must be reject or fail, not {policy!r}")
        values["bad_files"] = policy
    for name in ("LAKEHOUSE_LOOKBACK_MONTHS", "LAKEHOUSE_LOOKBACK"):  # "orders=2,lineitem=6" (the first: old name)
        if env.get(name):
            periods = _pairs(name, env[name], lambda v: v.isdigit())
            values["lookback"] = {k: int(v) for k, v in periods.items()}
    if env.get("LAKEHOUSE_MAX_QUARANTINED_SHARE"):  # "orders=0.01" or "*=0.01"
        shares = _pairs("LAKEHOUSE_MAX_QUARANTINED_SHARE", env["LAKEHOUSE_MAX_QUARANTINED_SHARE"], _is_share)
        values["max_quarantined_share"] = {k: float(v) for k, v in shares.items()}
    if env.get("LAKEHOUSE_BATCH_ROWS"):  # "orders=1..500000,lineitem=1.."
        ranges = _pairs("LAKEHOUSE_BATCH_ROWS", env["LAKEHOUSE_BATCH_ROWS"], _is_range)
        values["batch_rows"] = {k: _range(v) for k, v in ranges.items()}
    if env.get("LAKEHOUSE_FRESHNESS_DAYS"):  # "orders=2"
        days = _pairs("LAKEHOUSE_FRESHNESS_DAYS", env["LAKEHOUSE_FRESHNESS_DAYS"], _is_number)
        values["freshness_days"] = {k: float(v) for k, v in days.items()}
    if env.get("LAKEHOUSE_EXPECT_DELIVERY"):  # "orders,lineitem"
        values["expect_delivery"] = tuple(t.strip() for t in env["LAKEHOUSE_EXPECT_DELIVERY"].split(",") if t.strip())
    if env.get("LAKEHOUSE_MAX_INGEST_LAG_SECONDS"):  # "*=3600"
        lag = _pairs("LAKEHOUSE_MAX_INGEST_LAG_SECONDS", env["LAKEHOUSE_MAX_INGEST_LAG_SECONDS"], _is_number)
        values["max_ingest_lag_seconds"] = {k: float(v) for k, v in lag.items()}
    if env.get("LAKEHOUSE_CHECK_ACTIONS"):  # "orders.freshness=fail,references=fail"
        values["check_actions"] = _pairs("LAKEHOUSE_CHECK_ACTIONS", env["LAKEHOUSE_CHECK_ACTIONS"],
                                         lambda v: v in ("warn", "fail"))
    if env.get("LAKEHOUSE_HOT_KEY_SHARE"):  # "user_totals=0.05" or "*=0.05"
        shares = _pairs("LAKEHOUSE_HOT_KEY_SHARE", env["LAKEHOUSE_HOT_KEY_SHARE"], _is_share)
        values["hot_key_share"] = {k: float(v) for k, v in shares.items()}
    if env.get("LAKEHOUSE_SALTS"):  # "user_totals=0" (off) or "*=8"
        salts = _pairs("LAKEHOUSE_SALTS", env["LAKEHOUSE_SALTS"], lambda v: v.isdigit() and int(v) <= 64)
        values["salts"] = {k: int(v) for k, v in salts.items()}
    if env.get("LAKEHOUSE_STORAGE_TIMEOUT"):  # seconds
        if not _is_number(env["LAKEHOUSE_STORAGE_TIMEOUT"]):
            raise ConfigError(f"LAKEHOUSE_STORAGE_TIMEOUT must be a number of seconds, not "
                              f"{env['LAKEHOUSE_STORAGE_TIMEOUT']!r}")
        values["storage_timeout"] = float(env["LAKEHOUSE_STORAGE_TIMEOUT"])
    if env.get("LAKEHOUSE_PARALLEL_STAGES"):
        stages = env["LAKEHOUSE_PARALLEL_STAGES"].strip()
        if not stages.isdigit() or int(stages) > 64:
            raise ConfigError(f"LAKEHOUSE_PARALLEL_STAGES must be a whole number of stages from 0 (auto) to 64, not "
                              f"{stages!r}")
        values["parallel_stages"] = int(stages)
    if env.get("LAKEHOUSE_ALLOW_UNSAFE_STORE"):
        flag = env["LAKEHOUSE_ALLOW_UNSAFE_STORE"].strip().lower()
        if flag not in ("true", "false", "1", "0"):
            raise ConfigError(f"LAKEHOUSE_ALLOW_UNSAFE_STORE must be true or false, not {flag!r}")
        values["allow_unsafe_store"] = flag in ("true", "1")
    if env.get("LAKEHOUSE_NEW_COLUMNS"):  # "orders=evolve"
        values["new_columns"] = _pairs("LAKEHOUSE_NEW_COLUMNS", env["LAKEHOUSE_NEW_COLUMNS"],
                                       lambda v: v in ("evolve", "fail"))
    return values


def _pairs(name: str, text: str, valid: Callable[[str], bool]) -> dict[str, str]:
    """``table=value,table=value`` from an environment variable."""
    found = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        key, _, value = (part.strip() for part in entry.partition("="))
        if not key or not valid(value):
            raise ConfigError(f"{name}: cannot read {entry!r} (expected table=value, e.g. orders=2)")
        found[key] = value
    return found


def _is_number(text: str) -> bool:
    try:
        return float(text) >= 0
    except ValueError:
        return False


def _is_range(text: str) -> bool:
    low, sep, high = text.partition("..")
    return bool(sep) and all(not p or p.isdigit() for p in (low, high))


def _range(text: str) -> tuple[int | None, int | None]:
    low, _, high = text.partition("..")
    return (int(low) if low else None, int(high) if high else None)


def _is_share(text: str) -> bool:
    try:
        return 0.0 <= float(text) <= 1.0
    except ValueError:
        return False
