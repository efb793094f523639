#!/bin/sh
# Random passwords for docker-compose.yml, one file each (0600) in DIR (default ./secrets):
#   postgres_password     PostgreSQL's superuser (the postgres image's own)
#   pairdb_db_password    role `pairdb`, owner of database pairdb
#   pairdb_postgres_dsn   the coordinators' and worker's DSN, with that password
#   temporal_db_password  role `temporal`, owner of databases temporal and temporal_visibility
# Existing files are kept: the database was initialised with them.
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
echo "secrets in $dir: $(ls "$dir" | tr '\n' ' ')"
