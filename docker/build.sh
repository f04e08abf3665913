#!/usr/bin/env bash
# Builds both images with the tags of docker/IMAGE, the one place the image name lives; --push also pushes them.
#
#   docker/build.sh [--push]                    (from anywhere; the build context is the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
image=$(tr -d '[:space:]' < docker/IMAGE)

docker build -f docker/Dockerfile.gpu -t "$image" .
docker build -f docker/Dockerfile.cpu -t "$image-cpu" .
if [[ "${1:-}" == --push ]]; then
    docker push "$image"
    docker push "$image-cpu"
fi
echo "built $image and $image-cpu"
