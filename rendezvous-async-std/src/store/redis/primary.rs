//! Where the registry's primary is: the one Redis a URL names, or the one
//! its Sentinels name now. Every connection is made to the primary of the
//! moment and its role checked (`ROLE`) before anything is written. With
//! Sentinels, a watch asks them every [`WATCH_EVERY`] which primary they
//! name, and counts each change ([`Primary::epoch`]): a connection made
//! before a change is dropped for one to the new primary, so that a
//! restarted old primary, still a primary until Sentinel demotes it (which
//! takes up to ten seconds), does not take writes the registry then loses.
//! After a failure, a connection is made again, asking the Sentinels anew;
//! the `redis` crate's connection manager would reconnect to the address
//! it first had.

use std::sync::Weak;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_lock::Mutex;
use redis::aio::MultiplexedConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{AsyncConnectionConfig, Client, ConnectionAddr, RedisResult, Value};

use super::url::{SentinelUrl, is_sentinel};

/// How often the watch asks the Sentinels which primary they name.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// The registry's primary, as the store reaches it.
pub(super) struct Primary {
    kind: Kind,
    /// Changes of the primary the Sentinels name, seen by the watch.
    epoch: AtomicU64,
}

enum Kind {
    /// One Redis.
    Direct(Client),
    /// The primary a set of Sentinels names, and the master's name.
    Sentinel(Mutex<SentinelClient>, String),
}

impl Primary {
    /// The primary `url` names, or why it cannot name one.
    pub(super) fn new(url: &str) -> Result<Primary, String> {
        let primary = |kind| Primary { kind, epoch: AtomicU64::new(0) };
        if !is_sentinel(url) {
            return Client::open(url).map(|c| primary(Kind::Direct(c))).map_err(|e| e.to_string());
        }
        let parsed = SentinelUrl::parse(url)?;
        let sentinels = parsed.sentinels.iter().map(|(h, p)| ConnectionAddr::Tcp(h.clone(), *p));
        let mut builder = SentinelClientBuilder::new(
            sentinels,
            parsed.master.clone(),
            SentinelServerType::Master,
        )
        .map_err(|e| e.to_string())?
        .set_client_to_redis_db(parsed.db);
        if let Some(tls) = parsed.tls {
            builder = builder.set_client_to_redis_tls_mode(tls);
        }
        if let Some(user) = &parsed.username {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = &parsed.password {
            builder = builder.set_client_to_redis_password(password);
        }
        if let Some(user) = &parsed.sentinel_username {
            builder = builder.set_client_to_sentinel_username(user);
        }
        if let Some(password) = &parsed.sentinel_password {
            builder = builder.set_client_to_sentinel_password(password);
        }
        let client = builder.build().map_err(|e| e.to_string())?;
        Ok(primary(Kind::Sentinel(Mutex::new(client), parsed.master)))
    }

    /// Whether Sentinels name the primary (then it may move).
    pub(super) fn follows_sentinels(&self) -> bool {
        matches!(self.kind, Kind::Sentinel(..))
    }

    /// How many times the Sentinels named another primary: read it before
    /// connecting, and give up the connection once
    /// [`moved_since`](Self::moved_since) that.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Whether the Sentinels named another primary since `epoch`.
    pub(super) fn moved_since(&self, epoch: u64) -> bool {
        self.epoch() != epoch
    }

    /// The error a connection to a primary no longer named ends with.
    pub(super) fn moved_error(why: &str) -> redis::RedisError {
        redis::RedisError::from((redis::ErrorKind::Io, "the primary moved", why.to_owned()))
    }

    /// Watches which primary the Sentinels name, for as long as the store
    /// lives; does nothing for one Redis.
    pub(super) async fn watch(primary: Weak<Primary>) {
        let mut named: Option<(String, u16)> = None;
        let mut sentinel: Option<MultiplexedConnection> = None;
        loop {
            async_io::Timer::after(WATCH_EVERY).await;
            let Some(primary) = primary.upgrade() else { return };
            let Kind::Sentinel(client, master) = &primary.kind else { return };
            if sentinel.is_none() {
                let Ok(client) = client.lock().await.async_get_sentinel_client().await else {
                    continue;
                };
                sentinel = client.get_multiplexed_async_connection().await.ok();
            }
            let Some(connection) = &mut sentinel else { continue };
            let answer: RedisResult<Option<(String, u16)>> = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(master)
                .query_async(connection)
                .await;
            match answer {
                Ok(Some(now)) => {
                    if named.as_ref().is_some_and(|before| *before != now) {
                        tracing::info!(
                            target: "rendezvous::server",
                            "Sentinel names a new primary at {}:{}",
                            now.0,
                            now.1
                        );
                        primary.epoch.fetch_add(1, Ordering::AcqRel);
                    }
                    named = Some(now);
                }
                Ok(None) => {}
                Err(_) => sentinel = None,
            }
        }
    }

    /// A connection to the primary, at start: through Sentinels, asked
    /// again for up to `patience` while they have none to name (a failover
    /// under way); one Redis, once.
    pub(super) async fn first_connection(
        &self,
        config: &AsyncConnectionConfig,
        patience: Duration,
    ) -> RedisResult<MultiplexedConnection> {
        let started = Instant::now();
        loop {
            match self.connect(config).await {
                Err(error) if self.follows_sentinels() && started.elapsed() < patience => {
                    tracing::debug!(target: "rendezvous::server", "no primary yet ({error}); asking the Sentinels again");
                    async_io::Timer::after(Duration::from_millis(200)).await;
                }
                done => return done,
            }
        }
    }

    /// A connection to the primary of the moment, whose role is checked.
    pub(super) async fn connect(
        &self,
        config: &AsyncConnectionConfig,
    ) -> RedisResult<MultiplexedConnection> {
        let client = match &self.kind {
            Kind::Direct(client) => client.clone(),
            Kind::Sentinel(sentinels, _) => sentinels.lock().await.async_get_client().await?,
        };
        let mut connection = client.get_multiplexed_async_connection_with_config(config).await?;
        check_role(&mut connection).await?;
        Ok(connection)
    }
}

/// An error unless `connection` is to a primary.
async fn check_role(connection: &mut MultiplexedConnection) -> RedisResult<()> {
    let role: Value = redis::cmd("ROLE").query_async(connection).await?;
    let name = match &role {
        Value::Array(parts) => match parts.first() {
            Some(Value::BulkString(name)) => String::from_utf8_lossy(name).into_owned(),
            _ => String::new(),
        },
        _ => String::new(),
    };
    if name == "master" {
        return Ok(());
    }
    Err(redis::RedisError::from((
        redis::ErrorKind::Io,
        "not the primary",
        format!("ROLE says {name:?}"),
    )))
}
