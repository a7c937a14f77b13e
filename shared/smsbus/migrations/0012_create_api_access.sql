-- Who may use the HTTP API and the browser pages, and what a message asks to be told back
-- (SPEC §10, §13). The api service owns these tables; the webhooks service reads api_keys
-- to sign the callbacks of the messages a key created.

-- A key is a 256-bit random secret shown once; only its SHA-256 is kept.
CREATE TABLE api_keys (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL UNIQUE,
    secret_sha256   bytea NOT NULL UNIQUE,
    scopes          text[] NOT NULL,
    -- signs this key's delivery callbacks (HMAC-SHA256); kept in clear because signing needs it
    callback_secret text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_used_at    timestamptz,
    revoked_at      timestamptz,

    CONSTRAINT api_keys_name_not_empty CHECK (name <> ''),
    CONSTRAINT api_keys_secret_is_sha256 CHECK (octet_length(secret_sha256) = 32),
    CONSTRAINT api_keys_scopes_known CHECK (
        cardinality(scopes) > 0 AND scopes <@ ARRAY['send', 'read', 'admin']::text[])
);

-- People who log in to the Web Messenger and the Manager; argon2id hashes only.
CREATE TABLE users (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text NOT NULL UNIQUE,
    password_hash text NOT NULL,
    role          text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    disabled_at   timestamptz,

    CONSTRAINT users_name_not_empty CHECK (name <> ''),
    CONSTRAINT users_role_known CHECK (role IN ('admin', 'operator', 'agent')),
    CONSTRAINT users_password_is_argon2id CHECK (password_hash LIKE '$argon2id$%')
);

-- A message may name a URL to be told of each of its status changes, signed with the secret
-- of the key that created it (NULL when it came by SQL, the CLI or the Python API).
-- No foreign key: a key may be deleted while its messages live on, and archived rows keep it.
ALTER TABLE messages
    ADD COLUMN status_callback text,
    ADD COLUMN api_key_id bigint,
    ADD CONSTRAINT messages_status_callback_is_http CHECK (status_callback ~ '^https?://');
