-- The same step as migrations/sqlite/V4__leases.sql, with the database's clock every server
-- reads (SQLite has it as a function the server registers on its connection).
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    generation BIGINT NOT NULL,
    expires BIGINT NOT NULL
);
CREATE FUNCTION ferry_now_ms() RETURNS BIGINT
    LANGUAGE sql VOLATILE
    AS $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::BIGINT $$;
