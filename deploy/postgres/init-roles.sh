#!/bin/sh
# The equipwatch database and its two roles, made once on an empty server: the postgres image
# runs this from /docker-entrypoint-initdb.d when its data volume is new (for a server of your
# own, run it with PGHOST/PGUSER pointing at it as a superuser).
#   equipwatch      owns the database; the equipwatch processes log in as it
#   grafana_reader  reads every table equipwatch makes, and can change nothing
# Passwords come from EQUIPWATCH_DB_PASSWORD and GRAFANA_DB_PASSWORD, never from this file.
set -eu
: "${EQUIPWATCH_DB_PASSWORD:?EQUIPWATCH_DB_PASSWORD is not set}"
: "${GRAFANA_DB_PASSWORD:?GRAFANA_DB_PASSWORD is not set}"
admin="${POSTGRES_USER:-postgres}"

psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$admin" --dbname "${POSTGRES_DB:-$admin}" \
    -v app_password="$EQUIPWATCH_DB_PASSWORD" -v reader_password="$GRAFANA_DB_PASSWORD" <<'SQL'
CREATE ROLE equipwatch LOGIN PASSWORD :'app_password';
CREATE ROLE grafana_reader LOGIN PASSWORD :'reader_password';
CREATE DATABASE equipwatch OWNER equipwatch;
\connect equipwatch
-- the time series live in schema equipwatch, the records (Alembic) in public; both belong
-- to equipwatch, so its migrations can create and alter what they need
CREATE SCHEMA equipwatch AUTHORIZATION equipwatch;
ALTER SCHEMA public OWNER TO equipwatch;
REVOKE ALL ON DATABASE equipwatch FROM PUBLIC;
GRANT CONNECT ON DATABASE equipwatch TO equipwatch, grafana_reader;
GRANT USAGE ON SCHEMA equipwatch, public TO grafana_reader;
-- tables equipwatch creates later are readable by Grafana as soon as they exist
ALTER DEFAULT PRIVILEGES FOR ROLE equipwatch IN SCHEMA equipwatch, public
    GRANT SELECT ON TABLES TO grafana_reader;
ALTER ROLE grafana_reader SET search_path = equipwatch, public;
ALTER ROLE grafana_reader SET default_transaction_read_only = on;
ALTER ROLE grafana_reader SET statement_timeout = '30s';
SQL
