"""Operating a lake: the ``lakehouse`` command (:mod:`.cli`), ``lakehouse init`` (:mod:`.project`), DuckDB queries
(:mod:`.query`), sweeping what failed attempts left (:mod:`.maintenance`), table maintenance (:mod:`.maintain`) and
fail points for crash tests (:mod:`.faults`)."""
