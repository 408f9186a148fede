#!/usr/bin/env bash
# The quick-start "run" command: builds routerd and the demo, then runs the
# end-to-end demo (3 routerd processes on 127.0.0.1, two providers exchanging
# Signal-encrypted messages, the leader killed mid-stream, a report).
#   PROFILE=debug bash deploy/demo.sh   reuses a debug build (what CI does)
#   extra arguments go to interop-demo (e.g. --messages 300 --dir ./demo-run)
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install-deps.sh >/dev/null
profile="${PROFILE:-release}"
if [ "$profile" = "release" ]; then
    cargo build --release --locked -p router-node -p router-demo
else
    cargo build --locked -p router-node -p router-demo
fi
exec "target/$profile/interop-demo" --routerd "target/$profile/routerd" "$@"
