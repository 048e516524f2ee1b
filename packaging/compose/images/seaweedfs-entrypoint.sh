#!/bin/sh
# weed mini on loopback: S3 on $S3_PORT (one admin identity from S3_ACCESS_KEY/S3_SECRET_KEY), the other
# listeners on $S3_PORT+1.. (gRPC +10000), data under /data.
set -eu
weed=/opt/weed/bin/weed
p=${S3_PORT:-8333}
mkdir -p /data/weed
cat > /tmp/s3.json <<JSON
{"identities": [
  {"name": "admin", "credentials": [{"accessKey": "${S3_ACCESS_KEY:?}", "secretKey": "${S3_SECRET_KEY:?}"}],
   "actions": ["Admin", "Read", "List", "Tagging", "Write"]},
  {"name": "anonymous", "actions": []}]}
JSON
m=$((p + 1)); v=$((p + 2)); f=$((p + 3)); a=$((p + 4))
cd /data
exec "$weed" -logtostderr mini -dir=/data/weed -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.config=/tmp/s3.json \
    -master.port=$m -master.port.grpc=$((m + 10000)) -volume.port=$v -volume.port.grpc=$((v + 10000)) \
    -filer.port=$f -filer.port.grpc=$((f + 10000)) -s3.port=$p -s3.port.grpc=$((p + 10000)) \
    -admin.port=$a -admin.port.grpc=$((a + 10000)) -admin.ui=false -webdav=false -s3.port.iceberg=0 \
    -s3.port.lance=0 -master.telemetry=false -volume.preStopSeconds=0
