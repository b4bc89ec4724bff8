#!/usr/bin/env bash
# The test command (README.md, .ci/run): installs what a fresh machine lacks, then
# runs the whole pytest suite.  Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# CPU torch: 2.13.0 is the build this project's machines carry locally; a machine
# that already has torch (a CUDA build, say) keeps it.
python3 -c "import torch" 2>/dev/null || python3 -m pip install -q "torch==2.13.0"
python3 -m pip install -q -e ".[test]"
exec python3 -m pytest -q "$@"
