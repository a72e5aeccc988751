-- 003: what the running service knows that `status` (a separate process)
-- should show: connectivity of upstream and of the local database, and the
-- alerts currently raised. One row per key; the service upserts on every
-- transition, so a row describes the current state, not a history (the
-- history is in the logs and _sync_log). Keys: `upstream` (online/offline),
-- `alert:<name>` (raised), `push:batch_size` (the pusher's reduced batch size
-- and why, written by the pusher when it changes, removed when back to the
-- configured size or when the pusher starts).
CREATE TABLE IF NOT EXISTS _sync_state (
    key TEXT PRIMARY KEY,
    value TEXT,
    since TIMESTAMPTZ,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT NOW()
);
