#!/bin/sh
# A sample sync command for syncschedd (see examples/daemon/syncschedd.json).
#
# syncschedd runs it without a shell, in a process group of its own, with the run described in
# SYNCSCHED_* environment variables. Its stdout and stderr go to the daemon's log, one line per
# log entry; exit 0 means success, anything else an error whose message is the tail of stderr.
echo "sync ${SYNCSCHED_SYNC}::${SYNCSCHED_VARIANT} of ${SYNCSCHED_INTEGRATION}/${SYNCSCHED_CONNECTION}"
echo "run_id=${SYNCSCHED_RUN_ID} mode=${SYNCSCHED_MODE} slot=${SYNCSCHED_SLOT} attempt=${SYNCSCHED_ATTEMPT}"
if [ "${SYNCSCHED_MODE}" = "full_resync" ]; then
  echo "full resync: fetching everything from the start"
fi
exit 0
