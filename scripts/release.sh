#!/usr/bin/env bash
# The whole release flow, as CI or a maintainer runs it: build every target (from the cache where
# possible), benchmark them on this machine when this checkout has the bench command, release, verify.
#
#   scripts/release.sh VERSION [--config FILE.toml] [--out DIR] [--dist DIR] [--allow-failed TARGET]...
#
# --config/--out go to every step, --dist/--allow-failed to release. PYTHON overrides .venv/bin/python.
# Exits non-zero at the first step that fails; a target that failed to build or verify stops the
# release unless --allow-failed names it.
set -euo pipefail
cd "$(dirname "$0")/.."
usage="usage: scripts/release.sh VERSION [--config FILE.toml] [--out DIR] [--dist DIR] [--allow-failed TARGET]..."
[[ $# -ge 1 && $1 != -* ]] || { echo "$usage" >&2; exit 2; }
version=$1
shift
build=()
release=()
while [[ $# -gt 0 ]]; do
    [[ $# -ge 2 ]] || { echo "$usage" >&2; exit 2; }
    case $1 in
        --config|--out) build+=("$1" "$2") ;;
        --dist|--allow-failed) release+=("$1" "$2") ;;
        *) echo "$usage" >&2; exit 2 ;;
    esac
    shift 2
done
py=${PYTHON:-.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "release.sh: build every target" >&2
# Exit 1 means some target failed: release decides (it refuses unless --allow-failed names it).
"$py" -m pipeline build --target all "${build[@]}" || [[ $? -eq 1 ]]

bench=()
if "$py" -m pipeline bench --help >/dev/null 2>&1; then
    echo "release.sh: benchmark on this machine" >&2
    # A failed row (e.g. a target that failed to build) still leaves the others in the file.
    "$py" -m pipeline bench --target all "${build[@]}" --json "$work/bench.json" || [[ $? -eq 1 ]]
    if [[ -s $work/bench.json ]]; then
        bench=(--bench "$work/bench.json")
    fi
else
    echo "release.sh: this checkout has no bench command: releasing without latency (not benchmarked)" >&2
fi

echo "release.sh: release $version" >&2
"$py" -m pipeline release --version "$version" --target all "${build[@]}" "${release[@]}" "${bench[@]}" \
    | tee "$work/release.out"
folder=$(sed -n 's/^release: //p' "$work/release.out")

echo "release.sh: verify $folder" >&2
"$py" -m pipeline verify "$folder"
echo "release.sh: $folder built, released and verified" >&2
