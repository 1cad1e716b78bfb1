#!/usr/bin/env bash
# Install on a plain Linux host with the CPU provider: see deploy/install.sh for the options.
exec "$(dirname "$0")/../install.sh" --target linux "$@"
