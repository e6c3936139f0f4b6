#!/usr/bin/env bash
# Usage: scripts/ensure-s3.sh
#
# Make sure the S3 server of the test suite (tests/s3.rs) is installed: the `s3s-fs` binary, built
# by `cargo install s3s-fs@0.14.1 --features binary --locked` into cargo's bin folder when missing.
# Skipped when CALLFS_TEST_S3_ENDPOINT points the suite at an external S3. Idempotent and quiet.
set -euo pipefail

[[ -n ${CALLFS_TEST_S3_ENDPOINT:-} ]] && exit 0

bin_dir=${CARGO_HOME:-$HOME/.cargo}/bin
if command -v s3s-fs >/dev/null 2>&1 || [[ -x $bin_dir/s3s-fs ]]; then
  exit 0
fi
echo "ensure-s3: installing s3s-fs 0.14.1 (the S3 server of tests/s3.rs)" >&2
exec "${CARGO:-cargo}" install s3s-fs@0.14.1 --features binary --locked
