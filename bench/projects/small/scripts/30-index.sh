#!/bin/sh
# An index: file name and first line.
set -e
for f in src/*.txt; do echo "${f##*/}: $(head -n 1 "$f")"; done > "$1/index"
