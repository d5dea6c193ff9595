#!/bin/sh
# as the official eclipse-mosquitto entrypoint: give /mosquitto to the mosquitto user when root
set -e
if [ "$(id -u)" = '0' ]; then
  [ -d /mosquitto ] && chown -R mosquitto:mosquitto /mosquitto 2>/dev/null || true
fi
exec "$@"
