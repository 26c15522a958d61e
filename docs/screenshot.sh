#!/usr/bin/env bash
# Remake docs/plots-page.png: headless Chromium photographs the plots page that `make plots` wrote,
# then the picture is shrunk to 1050 px wide and 256 colours so it stays under 200 KB.
# Usage, from a project where `make repro` and `make plots` ran: bash docs/screenshot.sh [PAGE] [OUT]
set -euo pipefail
page="$(realpath "${1:-dvc_plots/index.html}")"
out="${2:-docs/plots-page.png}"
profile="$(mktemp -d)"
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking \
  --disable-component-update --disable-sync --user-data-dir="$profile" --hide-scrollbars \
  --window-size=1400,2850 --virtual-time-budget=10000 --screenshot="$profile/page.png" "file://$page" 2>/dev/null
python - "$profile/page.png" "$out" <<'PY'
import sys
from PIL import Image

page = Image.open(sys.argv[1]).convert("RGB")
small = page.resize((1050, round(page.height * 1050 / page.width)), Image.Resampling.LANCZOS)
small.quantize(256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(sys.argv[2], optimize=True)
PY
echo "wrote $out ($(stat -c %s "$out") bytes)"
