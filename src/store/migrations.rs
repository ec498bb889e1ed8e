//! The database schema, as numbered migrations for each backend.
//!
//! Migration N is element N-1 of each list; both lists describe the same tables and columns, in
//! each dialect. `schema_version` records the applied numbers, so a store opened by a newer build
//! is upgraded in place and one written by a newer build is refused rather than misread.
//!
//! Times are Unix milliseconds (BIGINT) to keep both dialects identical and free of time-zone
//! rules. Secret columns hold sealed bytes (see `crypto.rs`); outbox bodies are not secret.

/// Creates the version table; run before reading it.
pub(crate) const SCHEMA_VERSION_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL PRIMARY KEY)";

pub(crate) const SQLITE: &[&str] = &[
    // 1: installations and the outbox.
    "CREATE TABLE installations (
        eshop_id INTEGER PRIMARY KEY,
        eshop_url TEXT,
        contact_email TEXT,
        oauth_token BLOB NOT NULL,
        status TEXT NOT NULL,
        installed_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        access_token BLOB,
        access_token_expires_at INTEGER,
        signature_key BLOB
    );
    CREATE INDEX installations_status ON installations (status);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        eshop_id INTEGER,
        body BLOB NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX outbox_next_attempt ON outbox (next_attempt_at);",
    // 2: settings-page state nonces already used (SPEC B9), kept until their state expires.
    "CREATE TABLE settings_nonces (
        nonce TEXT PRIMARY KEY,
        expires_at INTEGER NOT NULL
    );
    CREATE INDEX settings_nonces_expiry ON settings_nonces (expires_at);",
];

pub(crate) const POSTGRES: &[&str] = &[
    // 1: installations and the outbox.
    "CREATE TABLE installations (
        eshop_id BIGINT PRIMARY KEY,
        eshop_url TEXT,
        contact_email TEXT,
        oauth_token BYTEA NOT NULL,
        status TEXT NOT NULL,
        installed_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL,
        access_token BYTEA,
        access_token_expires_at BIGINT,
        signature_key BYTEA
    );
    CREATE INDEX installations_status ON installations (status);
    CREATE TABLE outbox (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        kind TEXT NOT NULL,
        eshop_id BIGINT,
        body BYTEA NOT NULL,
        attempts BIGINT NOT NULL DEFAULT 0,
        next_attempt_at BIGINT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX outbox_next_attempt ON outbox (next_attempt_at);",
    // 2: settings-page state nonces already used (SPEC B9), kept until their state expires.
    "CREATE TABLE settings_nonces (
        nonce TEXT PRIMARY KEY,
        expires_at BIGINT NOT NULL
    );
    CREATE INDEX settings_nonces_expiry ON settings_nonces (expires_at);",
];

#[cfg(test)]
mod tests {
    #[test]
    fn both_dialects_have_the_same_migration_count() {
        assert_eq!(super::SQLITE.len(), super::POSTGRES.len());
    }
}
