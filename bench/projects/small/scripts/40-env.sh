#!/bin/sh
# Record the config the image is built with.
set -e
grep -v '^#' etc/app.conf | sed 's/ *= */=/' > "$1/config.env"
