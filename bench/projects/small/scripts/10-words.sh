#!/bin/sh
# Count word occurrences over the notes.
set -e
cat src/*.txt | busybox tr ' ' '\n' | grep -v '^$' | busybox sort | busybox uniq -c | busybox sort -rn > "$1/words"
