#!/usr/bin/env bash
# Regenerates the README's config reference (between the config-reference markers) from
# `longtrain config --docs`, the one source of truth. Run after adding or changing a key:
#   bash tools/update-readme-config.sh [path/to/longtrain]
set -euo pipefail
cd "$(dirname "$0")/.."
binary=${1:-build/longtrain}
table=$(mktemp)
"$binary" config --docs > "$table"
awk -v table="$table" '
  /<!-- config-reference:begin -->/ { print; while ((getline line < table) > 0) print line; skip = 1; next }
  /<!-- config-reference:end -->/ { skip = 0 }
  !skip { print }
' README.md > README.md.tmp
mv README.md.tmp README.md
rm -f "$table"
