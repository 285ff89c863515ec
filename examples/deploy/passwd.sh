#!/usr/bin/env sh
# Write mosquitto's password file with Drover's client (user `drover`, password
# $DROVER_BROKER_SECRET). Devices are added as they enroll: user `{type}/{device-id}`,
# password the device's access token (mosquitto_passwd -b passwd android/<id> <token>),
# or, at scale, an auth plugin that asks Drover's database (docs/deploy.md).
set -eu
cd "$(dirname "$0")/mosquitto"
: "${DROVER_BROKER_SECRET:?set DROVER_BROKER_SECRET}"
rm -f passwd
touch passwd
chmod 0600 passwd
mosquitto_passwd -b passwd drover "$DROVER_BROKER_SECRET"
