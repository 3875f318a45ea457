#!/bin/sh
# Init container of the rabbitmq StatefulSet: writes the configuration the server reads
# from /etc/rabbitmq (an emptyDir) and the Erlang cookie the cluster's nodes share.
# Env: RABBITMQ_DEFAULT_PASS, RABBITMQ_ERLANG_COOKIE (Secret), RABBITMQ_REPLICAS,
# MEMORY_LIMIT_BYTES (the container's limit, downward API), POD_NAMESPACE; the paths
# can be moved (SETUP_CONFIG_DIR, SETUP_OUTPUT_DIR, SETUP_DATA_DIR) for tests/deploy.
set -eu
config=${SETUP_CONFIG_DIR:-/config}
out=${SETUP_OUTPUT_DIR:-/etc/rabbitmq}
cp "$config/enabled_plugins" "$out/enabled_plugins"
{
  cat "$config/rabbitmq.conf"
  echo "default_user = flashsale"
  echo "default_pass = $RABBITMQ_DEFAULT_PASS"
  # Publishers are blocked at half the limit, long before the kernel's OOM killer.
  echo "total_memory_available_override_value = $MEMORY_LIMIT_BYTES"
  echo "vm_memory_high_watermark.absolute = $((MEMORY_LIMIT_BYTES / 2))"
  i=0
  while [ "$i" -lt "$RABBITMQ_REPLICAS" ]; do
    echo "cluster_formation.classic_config.nodes.$((i + 1)) = rabbit@rabbitmq-$i.rabbitmq-nodes.$POD_NAMESPACE"
    i=$((i + 1))
  done
} > "$out/rabbitmq.conf"
# Erlang refuses a cookie file that others can read.
cookie=${SETUP_DATA_DIR:-/var/lib/rabbitmq}/.erlang.cookie
rm -f "$cookie"
(umask 077 && printf '%s' "$RABBITMQ_ERLANG_COOKIE" > "$cookie")
chmod 400 "$cookie"
