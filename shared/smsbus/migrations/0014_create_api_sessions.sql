-- Browser sessions of users (SPEC §13) and their failed logins, kept in the database so that
-- any number of api processes behind a proxy share them (the api is stateless).

-- The cookie carries a 256-bit random token; only its SHA-256 is kept, like an API key's.
-- The CSRF token is sent back in a header on every cookie-authenticated write.
CREATE TABLE api_sessions (
    token_sha256 bytea PRIMARY KEY CONSTRAINT api_sessions_token_is_sha256 CHECK (octet_length(token_sha256) = 32),
    user_id      bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf_token   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX api_sessions_user_idx ON api_sessions (user_id);

-- One row per refused login; counted per user name and per address over a short window.
CREATE TABLE login_failures (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_name text NOT NULL,
    address   text NOT NULL,
    failed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX login_failures_user_idx ON login_failures (user_name, failed_at);
CREATE INDEX login_failures_address_idx ON login_failures (address, failed_at);
