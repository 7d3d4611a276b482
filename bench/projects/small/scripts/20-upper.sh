#!/bin/sh
# Upper-case copies of the notes.
set -e
mkdir -p "$1/upper.d"
for f in src/*.txt; do busybox tr a-z A-Z < "$f" > "$1/upper.d/${f##*/}"; done
cat "$1"/upper.d/*.txt > "$1/upper"
