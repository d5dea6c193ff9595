#!/bin/sh
set -e
echo "influxdb stand-in: VictoriaMetrics $(victoria-metrics -version 2>&1 | head -1) standing in for InfluxDB 2 (InfluxDB v2 write API only)"
exec victoria-metrics -httpListenAddr="${INFLUXD_HTTP_BIND_ADDRESS:-:8086}" -storageDataPath=/var/lib/influxdb2 -retentionPeriod=100y
