#!/bin/sh
# Start an ALT GPU worker (the worker image's entrypoint):
#   1. the work pool, this host's GPU limit (sized to the GPUs visible here) and, with
#      ALT_BUCKET, the S3 bucket for run folders (python -m deployments.setup);
#   2. with ALT_DEPLOY=1, the deployments of prefect.yaml (their pool is the one named
#      there, alt-gpu: keep ALT_WORK_POOL at that, or edit prefect.yaml);
#   3. the worker itself; its flow runs inherit ALT_GPU_LIMIT, so their GPU stages take
#      slots of this host's limit.
# Needs PREFECT_API_URL (and the AWS_* variables for s3:// run folders).
set -eu
: "${ALT_WORK_POOL:=alt-gpu}"
: "${ALT_GPU_LIMIT:=alt-gpu-$(hostname)}"
export ALT_WORK_POOL ALT_GPU_LIMIT

python -m deployments.setup --pool "$ALT_WORK_POOL" --gpu-limit "$ALT_GPU_LIMIT" \
    ${ALT_BUCKET:+--bucket "$ALT_BUCKET"}
if [ "${ALT_DEPLOY:-0}" = 1 ]; then
    prefect --no-prompt deploy --all
fi
exec prefect worker start --pool "$ALT_WORK_POOL" "$@"
