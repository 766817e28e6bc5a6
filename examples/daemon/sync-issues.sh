#!/bin/sh
# A sample sync command for syncschedd (see examples/daemon/syncschedd.json).
#
# syncschedd runs it without a shell, in a process group of its own, with the run described in
# SYNCSCHED_* environment variables. Its stdout and stderr go to the daemon's log, one line per
# log entry; echo "SYNCSCHED_COUNTS Issue 0 0 0"
# Out of API quota? Ask for the next run later than the grid would:
#   echo "SYNCSCHED_NEXT_RUN_IN=2h"
exit 0 means success, anything else an error whose message is the tail of stderr.
# Directives on stdout talk back to the engine (docs/daemon.md, "Directives"):
#   SYNCSCHED_COUNTS <model> <added> <updated> <deleted>   per-model counts (GET /sync/status)
#   SYNCSCHED_NEXT_RUN_IN=<duration>                        the next run this long after this one
echo "sync ${SYNCSCHED_SYNC}::${SYNCSCHED_VARIANT} of ${SYNCSCHED_INTEGRATION}/${SYNCSCHED_CONNECTION}"
echo "run_id=${SYNCSCHED_RUN_ID} mode=${SYNCSCHED_MODE} slot=${SYNCSCHED_SLOT} attempt=${SYNCSCHED_ATTEMPT}"
if [ "${SYNCSCHED_MODE}" = "full_resync" ]; then
  echo "full resync: fetching everything from the start"
fi
echo "SYNCSCHED_COUNTS Issue 0 0 0"
# Out of API quota? Ask for the next run later than the grid would:
#   echo "SYNCSCHED_NEXT_RUN_IN=2h"
exit 0
