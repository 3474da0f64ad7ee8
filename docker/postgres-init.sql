-- Run once by the postgres image at first start: the same role and database as
-- poolguard.testing.PostgresServer creates locally.
CREATE ROLE app LOGIN PASSWORD 'app';
CREATE DATABASE app OWNER app;
