#!/bin/sh
# fetch.sh HOST: the page at http://HOST/, fetched from a container on the compose
# project's network once the service answers (it may still be starting).
docker run --rm --network berth_default --entrypoint busybox web:test sh -c \
  'for i in $(busybox seq 100); do busybox wget -qO- "http://$0/" 2>/dev/null && exit 0; busybox sleep 0.1; done; busybox wget -qO- "http://$0/"' "$1"
