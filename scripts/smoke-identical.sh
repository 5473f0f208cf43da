#!/usr/bin/env bash
# Proves a refactor leaves training unchanged: every registered recipe's smoke run (deterministic,
# 2 threads, seed 0) reduced to its logged losses, its result.json figures and the SHA-256 of its
# exported encoder; two captures must be byte-identical.
#   scripts/smoke-identical.sh capture DIR [recipe ...]   (default: every recipe `ssl methods` lists)
#   scripts/smoke-identical.sh compare DIR_A DIR_B
# Uses the built ssl (dotnet fsi build.fsx build); SSL_DLL names another build.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
ssl=(dotnet "${SSL_DLL:-$root/Experiments/bin/Release/net10.0/ssl.dll}")

reduce() { # run folder -> the figures training decides, one per line
  python3 - "$1" <<'PY'
import hashlib, json, sys, os
run = sys.argv[1]
timing = {"images_per_s", "rss_mb", "peak_rss_mb", "live_tensors", "wall_s", "seconds", "step_ms"}
for line in open(os.path.join(run, "metrics.jsonl")):
    row = json.loads(line)
    print("metrics", json.dumps({k: v for k, v in row.items() if k not in timing}, sort_keys=True))
result = json.load(open(os.path.join(run, "result.json")))
for key in ("eval", "baselines"):
    print(key, json.dumps(result.get(key), sort_keys=True))
print("train.steps", result["train"]["steps"])
export = os.path.join(run, "export", "encoder.safetensors")
print("encoder.sha256", hashlib.sha256(open(export, "rb").read()).hexdigest() if os.path.exists(export) else "none")
PY
}

colour_folder() { # a small colour class tree (3 classes x 40 PNGs of 32 px) for the colour-only recipes
  python3 - "$1" <<'PY'
import os, struct, sys, zlib
root = sys.argv[1]
def png(path, rows):
    raw = b"".join(b"\0" + bytes(v for px in row for v in px) for row in rows)
    chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", len(rows[0]), len(rows), 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
palette = [((70, 130, 220), (220, 40, 30)), ((200, 200, 60), (120, 40, 160)), ((40, 160, 70), (250, 140, 20))]
for c, (back, front) in enumerate(palette):
    os.makedirs(os.path.join(root, f"class{c}"), exist_ok=True)
    for i in range(40):
        side, top, left = 10 + i % 8, (i * 7) % 20, (i * 11) % 20
        rows = [[front if top <= y < top + side and left <= x < left + side else back for x in range(32)] for y in range(32)]
        png(os.path.join(root, f"class{c}", f"{i:03d}.png"), rows)
PY
}

case "${1:-}" in
capture)
  out="$2"; shift 2
  mkdir -p "$out"
  names=("$@")
  if [ ${#names[@]} -eq 0 ]; then
    mapfile -t names < <("${ssl[@]}" methods | awk -F'│' 'NF > 2 { gsub(/ /, "", $2); if ($2 != "" && $2 != "recipe") print $2 }')
  fi
  # Colour-only recipes (the traits column of `ssl methods` says "colour") train on a colour folder.
  mapfile -t colour < <("${ssl[@]}" methods | awk -F'│' 'NF > 2 { gsub(/ /, "", $2); if ($2 != "" && $5 ~ /colour/) print $2 }')
  for name in "${names[@]}"; do
    run="$out/runs/$name"
    start=$(date +%s)
    data=()
    if printf '%s\n' "${colour[@]}" | grep -qx "$name"; then
      [ -d "$out/colour" ] || colour_folder "$out/colour"
      data=(--dataset "$out/colour")
    fi
    if "${ssl[@]}" train "$name" "${data[@]}" --preset smoke --deterministic --threads 2 --seed 0 --out "$run" --force >"$out/$name.log" 2>&1; then
      reduce "$run" >"$out/$name.txt"
      echo "$name: captured ($(( $(date +%s) - start )) s)"
    else
      echo "$name: FAILED (see $out/$name.log)"; echo failed >"$out/$name.txt"
    fi
  done ;;
compare)
  a="$2"; b="$3"; same=0; differ=0
  for f in "$a"/*.txt; do
    name=$(basename "$f" .txt)
    if cmp -s "$f" "$b/$name.txt"; then same=$((same + 1)); else differ=$((differ + 1)); echo "$name: differs"; diff "$f" "$b/$name.txt" | head -6 || true; fi
  done
  echo "$same identical, $differ differ"
  [ "$differ" -eq 0 ] ;;
*) echo "usage: $0 capture DIR [recipe ...] | compare DIR_A DIR_B" >&2; exit 2 ;;
esac
