"""Storage: relative paths joined to a local or S3 root, listing landed files, atomic whole-file writes."""

from __future__ import annotations

import pickle
from pathlib import Path

from lakehouse.settings import Settings
from lakehouse.storage import Storage


def test_uri_and_fs_path_for_a_local_root(tmp_path: Path) -> None:
    storage = Storage.from_settings(Settings(root=f"{tmp_path}/"))
    assert storage.root == str(tmp_path)
    assert not storage.is_s3
    assert storage.uri("silver/orders") == f"{tmp_path}/silver/orders"
    assert storage.uri("") == str(tmp_path)
    assert storage.fs_path("raw/orders/a.csv") == f"{tmp_path}/raw/orders/a.csv"
    assert storage.fs_path("") == str(tmp_path)
    assert storage.delta_options() == {}


def test_uri_and_fs_path_for_an_s3_root() -> None:
    options = {"AWS_REGION": "eu-west-1", "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    storage = Storage.from_settings(Settings(root="s3://bucket/prefix/", storage_options=options))
    assert storage.is_s3
    assert storage.uri("gold/x") == "s3://bucket/prefix/gold/x"
    assert storage.fs_path("gold/x") == "bucket/prefix/gold/x"
    assert storage.delta_options() == options
    # Storage goes to Ray workers: it must pickle (strings only, no filesystem held)
    assert pickle.loads(pickle.dumps(storage)) == storage


def test_list_files_is_recursive_and_skips_hidden_and_in_progress_files(tmp_path: Path) -> None:
    # given landed files, nested files, and files a writer has not finished (dot / underscore prefix)
    storage = Storage(str(tmp_path))
    for rel, data in {
        "raw/orders/1995-03/part-0.csv": b"a\n1\n",
        "raw/orders/1995-03/part-1.csv": b"a\n2\n3\n",
        "raw/orders/1995-04/deep/er/part-0.csv": b"",
        "raw/orders/1995-04/.part-1.csv.tmp": b"x",
        "raw/orders/1995-04/_SUCCESS": b"",
        "raw/orders/_started_123": b"",
        "raw/customer/customer.csv": b"c\n",
    }.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)

    # when the orders landing zone is listed
    found = {f.path: f for f in storage.list_files("raw/orders")}

    # then exactly the finished orders files come back, relative to the root, with size and mtime
    assert set(found) == {
        "raw/orders/1995-03/part-0.csv",
        "raw/orders/1995-03/part-1.csv",
        "raw/orders/1995-04/deep/er/part-0.csv",
    }
    assert found["raw/orders/1995-03/part-1.csv"].size == 6
    assert found["raw/orders/1995-03/part-0.csv"].mtime_ms > 1_600_000_000_000


def test_list_files_of_a_missing_dir_is_empty(tmp_path: Path) -> None:
    assert list(Storage(str(tmp_path)).list_files("raw/nothing")) == []


def test_write_bytes_atomic_creates_dirs_replaces_and_leaves_no_temp_file(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))

    storage.write_bytes_atomic("raw/nation/2024/nation.csv", b"first")
    storage.write_bytes_atomic("raw/nation/2024/nation.csv", b"second version")

    target = tmp_path / "raw/nation/2024/nation.csv"
    assert target.read_bytes() == b"second version"
    assert [p.name for p in target.parent.iterdir()] == ["nation.csv"]
    assert storage.exists("raw/nation/2024/nation.csv")
    with storage.open_input("raw/nation/2024/nation.csv") as f:
        assert f.read() == b"second version"


def test_exists_and_delete_dir(tmp_path: Path) -> None:
    storage = Storage(str(tmp_path))
    storage.write_bytes_atomic("_staging/run-1/a/b.parquet", b"x")
    assert storage.exists("_staging/run-1")

    storage.delete_dir("_staging/run-1")
    storage.delete_dir("_staging/never-there")

    assert not storage.exists("_staging/run-1")
    assert storage.exists("_staging")
