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
: "${TRITON_ARGS:=}"

case "${1:-serve}" in
  serve)
    if [ ! -f "$ARTIFACTS/manifest.json" ]; then
      echo "entrypoint: no export at $ARTIFACTS (mount the artifacts volume or enable the export init container)" >&2
      exit 2
    fi
    # shellcheck disable=SC2086  # RENDER_ARGS and TRITON_ARGS are word lists on purpose
    python3 -m model_repository.render --artifacts "$ARTIFACTS" --out "$REPOSITORY" --device "$DEVICE" \
      --precision "$PRECISION" --max-visual-tokens "$MAX_VISUAL_TOKENS" --fixed-image-size "$FIXED_IMAGE_SIZE" $RENDER_ARGS
    # shellcheck disable=SC2086
    exec tritonserver --model-repository="$REPOSITORY" --disable-auto-complete-config \
      --exit-timeout-secs=30 --http-port=8000 --grpc-port=8001 --metrics-port=8002 $TRITON_ARGS
    ;;
  gateway)
    exec colqwen2-gateway --host 0.0.0.0 --port "${GATEWAY_PORT:-8080}" \
      --triton-url "${COLQWEN2_TRITON_URL:-grpc://127.0.0.1:8001}"
    ;;
  *)
    exec "$@"
    ;;
esac
