#!/usr/bin/env bash
# Can Armory itself run our configs? A throwaway venv with PyPI armory-testbed 0.19.2:
#  1. every single-scenario config in examples/configs/ against Armory's own schema validator
#     (armory.utils.configuration.validate_config);
#  2. `armory run --no-docker <config> --check` on one config, unchanged;
#  3. pip's verdict on installing Armory's scenario engine next to this project's ART requirement.
# Writes benchmarks/results/armory_check.txt. Run: bash benchmarks/armory_check.sh (about 2 minutes).
set -uo pipefail
cd "$(dirname "$0")/.."
out=benchmarks/results/armory_check.txt
work=$(mktemp -d)
export HOME="$work/home" OMP_NUM_THREADS=1
mkdir -p "$HOME"
{
  echo "# armory check, $(date -u +%Y-%m-%dT%H:%M:%SZ), python $(python3 --version 2>&1 | cut -d' ' -f2)"
  python3 -m venv "$work/venv" && "$work/venv/bin/pip" install --quiet "armory-testbed==0.19.2" 2>&1 | tail -2
  echo "\$ armory --version"; "$work/venv/bin/armory" --version 2>&1
  echo; echo "## 1. Armory's schema validator on examples/configs/*.json"
  for config in examples/configs/*.json; do
    "$work/venv/bin/python" - "$config" <<'PY'
import json, sys
from armory.utils.configuration import validate_config
config = json.load(open(sys.argv[1]))
try:
    validate_config(config)
    print(f"{sys.argv[1]}: valid")
except Exception as error:  # jsonschema.ValidationError: print the first reason, as `armory run` does
    print(f"{sys.argv[1]}: INVALID: {str(error).splitlines()[0]}")
PY
  done
  echo; echo "## 2. armory run --no-docker examples/configs/cifar10_scalecert_masked_pgd.json --check (unchanged)"
  cp examples/configs/cifar10_scalecert_masked_pgd.json "$work/"
  (cd "$work" && timeout 600 "$work/venv/bin/armory" run --no-docker cifar10_scalecert_masked_pgd.json --check 2>&1 \
    | grep -E "ERROR|Error|error|Traceback|No module|rc=" | sed -E "s/[A-Za-z0-9+/=]{200,}/<base64 config>/; s/\x1b\[[0-9;]*m//g" | head -15)
  echo "exit status: ${PIPESTATUS[0]}"
  echo; echo "## 3. pip: Armory's scenario engine next to this project's ART requirement"
  "$work/venv/bin/pip" install --dry-run --quiet "armory-testbed[engine]==0.19.2" "adversarial-robustness-toolbox>=1.20" 2>&1 \
    | grep -E "conflict|depends on|requested|ResolutionImpossible" | head -6
} | tee "$out"
rm -rf "$work"
