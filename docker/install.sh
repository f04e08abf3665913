#!/usr/bin/env bash
# Installs electra-ray into the image's Python with the pins of pyproject.toml. Both Dockerfiles run it twice:
#
#   docker/install.sh deps PYPROJECT TORCH_VARIANT   # torch, then every dependency pyproject.toml pins
#   docker/install.sh project PROJECT_DIR            # the package itself (no dependency resolution), then checks
#
# Two steps so that editing the source rebuilds one small layer instead of reinstalling gigabytes of deps.
#
# TORCH_VARIANT is `cpu`; or `cuda`, the CUDA build matching the base image's CUDA_VERSION (12.8.1 -> cu128);
# or an explicit PyTorch wheel tag such as `cu126`.
#
# Why torch goes first, on its own: pyproject.toml pins the torch *release* (torch==X.Y.Z), not the build. The
# rayproject/ray base images carry no torch, and a plain `pip install .` would take PyPI's default build of the
# release. Installing the pinned release from PyTorch's index for the chosen variant, then everything else under
# a constraint naming that exact build (torch==X.Y.Z+cu128), means pip can never swap torch for another build
# while it resolves the rest (deepspeed also requires torch): a conflict fails the image build instead. Every
# node of a cluster (CPU head, GPU workers) so runs the torch release that the test suite ran.
set -euo pipefail

usage="usage: install.sh deps PYPROJECT cpu|cuda|cuXYZ  |  install.sh project PROJECT_DIR"
step=${1:?$usage}

# The dependency list of pyproject.toml, one requirement a line (the one source of every pin).
dependencies() {
    python - "$1" <<'EOF'
import sys, tomllib
for requirement in tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]:
    print(requirement)
EOF
}

case "$step" in
deps)
    pyproject=${2:?$usage}
    variant=${3:?$usage}
    torch_pin=$(dependencies "$pyproject" | tr -d ' ' | grep -E '^torch==' || true)
    if [[ $(echo "$torch_pin" | grep -c .) -ne 1 ]]; then
        echo "install.sh: pyproject.toml must pin torch exactly once (torch==X.Y.Z), found: ${torch_pin:-none}" >&2
        exit 1
    fi
    if [[ "$variant" == cuda ]]; then
        # nvidia/cuda images (which rayproject/ray -gpu images are built on) set CUDA_VERSION, e.g. 12.8.1.
        if [[ -z "${CUDA_VERSION:-}" ]]; then
            echo "install.sh: the base image sets no CUDA_VERSION; pass --build-arg TORCH_VARIANT=cuXYZ" >&2
            exit 1
        fi
        variant="cu$(echo "$CUDA_VERSION" | cut -d. -f1,2 | tr -d .)"
    fi
    echo "install.sh: $torch_pin from https://download.pytorch.org/whl/$variant"
    python -m pip install --no-cache-dir "$torch_pin" --index-url "https://download.pytorch.org/whl/$variant"

    requirements=$(mktemp)
    constraint=$(mktemp)
    dependencies "$pyproject" > "$requirements"
    python -m pip freeze | grep -E '^torch==' > "$constraint"
    echo "install.sh: keeping $(cat "$constraint") while installing the other pins"
    python -m pip install --no-cache-dir --requirement "$requirements" --constraint "$constraint"
    rm -f "$requirements" "$constraint"
    # Remembered for the `project` step's check.
    echo "$variant" > "$HOME/.electra-torch-variant"
    ;;
project)
    project_dir=${2:?$usage}
    # Dependencies are all in place from the `deps` step; resolving them again could only change them.
    python -m pip install --no-cache-dir --no-deps "$project_dir"
    # Fail the build, not the first training run, when the image does not hold what pyproject.toml pins.
    python - "$project_dir/pyproject.toml" "$(cat "$HOME/.electra-torch-variant")" <<'EOF'
import sys, tomllib
from importlib.metadata import PackageNotFoundError, version
from packaging.requirements import Requirement
import torch

pyproject, variant = sys.argv[1], sys.argv[2]
wrong = []
for line in tomllib.load(open(pyproject, "rb"))["project"]["dependencies"]:
    requirement = Requirement(line)
    try:
        installed = version(requirement.name)
    except PackageNotFoundError:
        wrong.append(f"{requirement} (not installed)")
        continue
    # Local build tags (X.Y.Z+cu128) satisfy ==X.Y.Z, as pip itself judges them.
    if not requirement.specifier.contains(installed.split("+")[0], prereleases=True):
        wrong.append(f"{requirement} (installed {installed})")
if wrong:
    sys.exit("image does not match pyproject.toml: " + "; ".join(wrong))
if variant == "cpu" and torch.version.cuda is not None:
    sys.exit(f"the CPU image got a CUDA build of torch ({torch.__version__})")
if variant != "cpu" and torch.version.cuda is None:
    sys.exit(f"the GPU image got a CPU-only build of torch ({torch.__version__})")
print(f"install.sh: pins satisfied; torch {torch.__version__} (CUDA {torch.version.cuda})")
EOF
    electra --help > /dev/null
    ;;
*)
    echo "$usage" >&2
    exit 2
    ;;
esac
