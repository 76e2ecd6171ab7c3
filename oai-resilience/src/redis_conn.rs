//! The Redis set-up that the Redis pacing store ([`pace::RedisStore`](crate::pace::RedisStore))
//! and the Redis retry budget ([`retry::redis`](crate::retry::redis)) share (feature `redis`):
//! the connection, how a Redis error is shown, how a key is named.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// A connection manager on the Redis at `url`. It connects lazily (a server that is down now
/// is tried on first use), bounds each connect and each answer by `op_timeout`, and tries one
/// reconnect. Fails only on a malformed URL, with the error's [kind](error_kind).
pub(crate) fn lazy_connection(
    url: &str,
    op_timeout: Duration,
) -> Result<ConnectionManager, String> {
    let client = redis::Client::open(url).map_err(|e| error_kind(&e))?;
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(1)
        .set_connection_timeout(Some(op_timeout))
        .set_response_timeout(Some(op_timeout));
    ConnectionManager::new_lazy_with_config(client, config).map_err(|e| error_kind(&e))
}

/// A Redis error as logs and error details show it: its kind only, since its message may
/// quote the URL (and the password in it).
pub(crate) fn error_kind(e: &redis::RedisError) -> String {
    format!("{:?} error", e.kind())
}

/// The name of the Redis key for `hash` under `prefix`: `prefix:{0123456789abcdef}`, the hash
/// in a hash tag so that a cluster keeps the key in one slot. The hash stands for names that
/// may hold secrets, which never reach Redis.
pub(crate) fn hashed_key(prefix: &str, hash: u64) -> String {
    format!("{prefix}:{{{hash:016x}}}")
}

/// `d` in whole milliseconds, at least 1 (an expiry of 0 is an error in Redis).
pub(crate) fn expiry_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
