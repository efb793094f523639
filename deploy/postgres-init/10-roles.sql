-- Run once by the postgres image, when its volume is first initialised (as the superuser).
-- pairdb and Temporal each get their own role and databases, neither a superuser, neither
-- able to connect to the other's. Passwords come from the Docker secrets, read by psql
-- itself, so they appear on no command line.
\set ON_ERROR_STOP on
\set pairdb_password `cat /run/secrets/pairdb_db_password`
\set temporal_password `cat /run/secrets/temporal_db_password`

CREATE ROLE pairdb LOGIN PASSWORD :'pairdb_password';
CREATE DATABASE pairdb OWNER pairdb;
REVOKE ALL ON DATABASE pairdb FROM PUBLIC;

CREATE ROLE temporal LOGIN PASSWORD :'temporal_password';
CREATE DATABASE temporal OWNER temporal;
CREATE DATABASE temporal_visibility OWNER temporal;
REVOKE ALL ON DATABASE temporal FROM PUBLIC;
REVOKE ALL ON DATABASE temporal_visibility FROM PUBLIC;
