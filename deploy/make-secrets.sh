#!/bin/sh
# Secrets for docker-compose.yml, one file each (0600) in DIR (default ./secrets):
#   postgres_password     PostgreSQL's superuser (the postgres image's own)
#   pairdb_db_password    role `pairdb`, owner of database pairdb
#   pairdb_postgres_dsn   the coordinators' and worker's DSN, with that password
#   temporal_db_password  role `temporal`, owner of databases temporal and temporal_visibility
#   admin_api_key         the cluster's first admin API key (`pairdb init` registers it)
#   certs/                the cluster CA and a certificate per process (`pairdb cert`): storage-1..3,
#                         coordinator-1..2, worker; ca.key stays here, on no server
# Existing files are kept: the database and the cluster were set up with them.
# The certificates are made by `pairdb cert` ($PAIRDB, default `pairdb`; without it, the image
# pairdb:latest from `docker compose build`).
set -eu
dir=${1:-secrets}
umask 077
mkdir -p "$dir"
random() { od -An -N24 -tx1 /dev/urandom | tr -d ' \n'; }  # hex: safe in a URL unquoted
for name in postgres_password pairdb_db_password temporal_db_password; do
    [ -s "$dir/$name" ] || random > "$dir/$name"
done
[ -s "$dir/pairdb_postgres_dsn" ] ||
    printf 'postgresql://pairdb:%s@postgres:5432/pairdb\n' "$(cat "$dir/pairdb_db_password")" > "$dir/pairdb_postgres_dsn"
# pdb_<12 hex key id>_<secret>: the format pairdb's own keys have.
[ -s "$dir/admin_api_key" ] ||
    printf 'pdb_%s_%s\n' "$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')" "$(random)" > "$dir/admin_api_key"

if [ ! -s "$dir/certs/ca.crt" ]; then
    mkdir -p "$dir/certs"
    if [ -n "${PAIRDB:-}" ] || command -v pairdb >/dev/null 2>&1; then
        cert() { ${PAIRDB:-pairdb} cert "$@" --certs-dir "$dir/certs" >/dev/null; }
    else
        certs=$(cd "$dir/certs" && pwd)
        cert() {
            docker run --rm -u "$(id -u):$(id -g)" -v "$certs:/certs" pairdb:latest \
                cert "$@" --certs-dir /certs >/dev/null
        }
    fi
    cert create-ca
    for node in storage-1 storage-2 storage-3; do
        cert create-node "$node" --role storage-node --host "$node"
    done
    for coordinator in coordinator-1 coordinator-2; do
        # Reached by its service name inside, and through 127.0.0.1 from this machine.
        cert create-node "$coordinator" --role coordinator --host "$coordinator" --host localhost --host 127.0.0.1
    done
    cert create-node worker --role worker
fi
echo "secrets in $dir: $(ls "$dir" | tr '\n' ' ')"
