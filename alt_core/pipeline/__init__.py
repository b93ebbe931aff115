"""The ALT iteration as data and code: the DAG declaration (`dag`), one body per stage
(`stages`), fingerprints (`fingerprints`), `alt status` (`status`), the run folder's layout
(`layout`), typed specs and results (`specs`) and the metrics row (`metrics`)."""
