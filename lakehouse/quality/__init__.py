"""Quality: validation against Pandera models (:mod:`.validation`, pandera's home), table-level checks and gates
(:mod:`.checks`), quarantined rows (:mod:`.quarantine`) and landed files that could not be read
(:mod:`.rejected_files`)."""
