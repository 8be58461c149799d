#!/bin/bash
# EMR bootstrap action: install Python packages on every node before applications start.
# Usage (config): bootstrap_actions: [{name: python-packages, script: install-python-packages.sh,
#                                      args: ["pyarrow==17.0.0"]}]
# Packages must be pinned; a failed install fails the bootstrap, and with it the run (as intended).
set -euo pipefail
if [ "$#" -eq 0 ]; then
  echo "install-python-packages.sh: no packages given; nothing to do"
  exit 0
fi
for package in "$@"; do
  case "$package" in
    *==*) ;;
    *) echo "install-python-packages.sh: '$package' is not pinned (expected name==version)" >&2; exit 2 ;;
  esac
done
sudo python3 -m pip install --no-cache-dir "$@"
