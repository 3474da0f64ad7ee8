#!/bin/sh
# Lets the postgres-standby service clone and stream from this server (test-only password
# auth from any container address: the ports are published on 127.0.0.1 only).
set -e
echo "host replication all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
