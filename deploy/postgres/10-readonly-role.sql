-- The read-only role dashboards (Grafana) and reconciliation reports use.
--
-- Run once by the postgres image on an empty data directory (mounted into
-- /docker-entrypoint-initdb.d/), through psql, as POSTGRES_USER in
-- POSTGRES_DB. The password comes from the container's environment:
--
--   TRADEBUS_READONLY_PASSWORD   password of role tradebus_readonly
--
-- POSTGRES_USER is the role `tradebus db upgrade` migrates with, so it owns
-- every table; ALTER DEFAULT PRIVILEGES below makes each table it creates
-- later (events, read models, views) readable here too.

\set ON_ERROR_STOP on
\getenv readonly_password TRADEBUS_READONLY_PASSWORD
\if :{?readonly_password}
\else
DO $$ BEGIN RAISE EXCEPTION 'TRADEBUS_READONLY_PASSWORD is not set'; END $$;
\endif
SELECT current_database() AS database_name \gset

CREATE ROLE tradebus_readonly
    LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
    CONNECTION LIMIT 20
    PASSWORD :'readonly_password';

-- Privileges are the boundary; these settings only make mistakes fail fast
-- (a session can change them, it cannot gain privileges by doing so).
ALTER ROLE tradebus_readonly SET default_transaction_read_only = on;
ALTER ROLE tradebus_readonly SET statement_timeout = '30s';

GRANT CONNECT ON DATABASE :"database_name" TO tradebus_readonly;
GRANT USAGE ON SCHEMA public TO tradebus_readonly;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO tradebus_readonly;
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO tradebus_readonly;
