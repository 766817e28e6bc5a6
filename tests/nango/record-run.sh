#!/bin/sh
# The sync command of the Nango client test: appends the run's environment, as one JSON line, to
# the file named by its first argument.
printf '{"integration":"%s","connection":"%s","sync":"%s","variant":"%s","mode":"%s","run_id":"%s","slot":"%s","attempt":"%s"}\n' \
  "$SYNCSCHED_INTEGRATION" "$SYNCSCHED_CONNECTION" "$SYNCSCHED_SYNC" "$SYNCSCHED_VARIANT" \
  "$SYNCSCHED_MODE" "$SYNCSCHED_RUN_ID" "$SYNCSCHED_SLOT" "$SYNCSCHED_ATTEMPT" >> "$1"
