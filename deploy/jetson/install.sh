#!/usr/bin/env bash
# Install on a Jetson (JetPack, onnxruntime-gpu): see deploy/install.sh for the options.
exec "$(dirname "$0")/../install.sh" --target jetson "$@"
