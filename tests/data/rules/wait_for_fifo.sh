#!/bin/sh
# Used by @inspectFile in tests/integration/test_waf_threads.py: blocks inside the engine call
# until the test writes "go" into the FIFO named by $1 (at most 20 s). ModSecurity's
# inspectFile treats output starting with "1" as clean, anything else as a match.
line=$(timeout 20 sh -c 'read l < "$0"; echo "$l"' "$1")
if [ "$line" = "go" ]; then echo "0 released"; else echo "1 timed out"; fi
