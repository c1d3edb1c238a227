"""Running a pipeline: the one run loop the CLI and the Prefect flow share (:mod:`.runner`), the run's context and
stage results (:mod:`.context`), its record in ``_meta.runs`` (:mod:`.runlog`), its quality report (:mod:`.report`)
and the dry run behind ``lakehouse plan`` (:mod:`.dryrun`)."""
