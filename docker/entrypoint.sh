#!/usr/bin/env bash
# Container entry point.
#   serve    render the model repository for $ARTIFACTS and run Triton (the default)
#   gateway  run the REST gateway (/embed, /embed_batch, /health) against Triton in the same pod
#   *        run the command as given (e.g. `colqwen2 health`)
set -euo pipefail
: "${ARTIFACTS:=/models/artifacts}"        # an export folder (manifest.json, processor/, fp16/, int8/ ...)
: "${REPOSITORY:=/tmp/model_repository}"   # rendered at start: the root filesystem is read-only
: "${DEVICE:=gpu}"
: "${PRECISION:=fp16}"                     # fp16, int8 or fp16,int8
: "${MAX_VISUAL_TOKENS:=0}"                # per image; 0: the checkpoint's own cap
: "${FIXED_IMAGE_SIZE:=0}"                 # 0: native resolution; S: letterbox to S x S
: "${RENDER_ARGS:=}"
: "${TRITON_ARGS:=}"                      # more tritonserver flags, space-separated
: "${SERVE_ARGS:=}"                       # supervisor options (--canary-interval, --max-restarts ...)
: "${SUPERVISOR_PORT:=8003}"               # the supervisor's /livez and /metrics
: "${ADMIN_KEY_FILE:=/etc/colqwen2/admin/key}"  # key for Triton's admin APIs (repository, shm, trace, logging)

case "${1:-serve}" in
  serve)
    if [ ! -f "$ARTIFACTS/manifest.json" ]; then
      echo "entrypoint: no export at $ARTIFACTS (mount the artifacts volume or enable the export init container)" >&2
      exit 2
    fi
    triton_flags=()
    for flag in $TRITON_ARGS; do triton_flags+=("--triton-arg=$flag"); done
    # Render, then run the image's tritonserver under the supervisor (restarts a dead server, /livez and
    # /metrics on $SUPERVISOR_PORT). The admin APIs are locked with the key in $ADMIN_KEY_FILE, or with a
    # random key nobody knows when there is none.
    # shellcheck disable=SC2086  # RENDER_ARGS and SERVE_ARGS are word lists on purpose
    exec python3 -m model_repository.serve --artifacts "$ARTIFACTS" --repository "$REPOSITORY" --device "$DEVICE" \
      --precision "$PRECISION" --max-visual-tokens "$MAX_VISUAL_TOKENS" --fixed-image-size "$FIXED_IMAGE_SIZE" \
      --host 0.0.0.0 --triton-binary tritonserver --exit-timeout 30 --supervisor-port "$SUPERVISOR_PORT" \
      --admin-key-file "$ADMIN_KEY_FILE" $RENDER_ARGS $SERVE_ARGS "${triton_flags[@]}"
    ;;
  gateway)
    exec colqwen2-gateway --host 0.0.0.0 --port "${GATEWAY_PORT:-8080}" \
      --triton-url "${COLQWEN2_TRITON_URL:-grpc://127.0.0.1:8001}"
    ;;
  *)
    exec "$@"
    ;;
esac
