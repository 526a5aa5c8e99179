#!/usr/bin/env bash
# Instructions per proxied request through the relay (in memory, no syscalls), counted by
# callgrind: repeatable on a noisy machine, unlike wall-clock figures. Compare before and after a
# hot-path change. Usage: bench/instructions.sh [httptools|h11]   (needs valgrind)
# It counts the build that imports: compiled by mypyc after make build, or LBPROXY_PURE=1.
set -euo pipefail
cd "$(dirname "$0")/.."
engine=${1:-httptools}
python=${PYTHON:-.venv/bin/python}
count() {
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$python" -c "
import sys; sys.path.insert(0, 'bench'); import relay_inmemory as r; r.run('$engine', $1)" 2>&1 \
    | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
small=$(count 1000)
large=$(count 3000)
build=$("$python" -c 'import lbproxy; print(lbproxy.BUILD)')
echo "$engine ($build): $(( (large - small) / 2000 )) instructions per proxied request"
