"""Prefect deployments of the ALT pipeline: what `alt serve` serves and `prefect.yaml`
deploys to work pools (`deployments.serve`), the entry-point flows only deployments
need (`deployments.flows`), remote shards (`deployments.shards`) and the per-host setup
of workers (`deployments.setup`)."""
