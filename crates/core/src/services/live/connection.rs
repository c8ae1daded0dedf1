//! [`LiveConnection`]: one client's live connection, the same for Server-
//! Sent Events and WebSocket.
//!
//! A task per connection follows the client's channels and puts
//! [`LiveFrame`]s in a bounded queue the transport drains. The task, not
//! the transport, decides when the connection ends, and says why with a
//! [`LiveFrame::Closing`] that overtakes whatever is still queued:
//! - the access token expires (at its `exp`, by a timer);
//! - the token or its session is revoked (logout, logout-all, a session
//!   revoked from another device): checked at once when the hub hears of a
//!   revocation of the user's tokens (made in this process, or over the
//!   bus in another), and every [`ConnectionSettings::auth_check`] (the
//!   hub's recheck interval: where revocations cannot be heard, PostgreSQL
//!   without Redis, 1 s);
//! - the client is slow: the queue stayed full for
//!   [`ConnectionSettings::slow_after`]. Memory per connection stays
//!   bounded; the client reconnects with its positions and loses nothing,
//!   since the messages live in the database;
//! - a channel cannot be read (the database is down).
//!
//! The queue only fills while the client is not reading: the task reads a
//! follower's next message only when there is room for it, so a client
//! catching up on many missed messages is not "slow", it is paced.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, Sleep};
use tokio_stream::StreamMap;

use super::hub::LiveHub;
use super::{
    CloseReason, KNOWN_CHANNELS, LiveChannel, LiveCommand, LiveFrame, LiveMessage, MAX_CHANNELS,
};
use crate::CoreError;
use crate::ports::store::StoreResult;
use crate::services::auth::Principal;

/// How a connection is paced and checked.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionSettings {
    /// Frames waiting for the client.
    pub queue: usize,
    /// How long the queue may stay full before the client is cut off as
    /// slow.
    pub slow_after: Duration,
    /// How often the token and session are checked for revocation.
    pub auth_check: Duration,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        Self {
            queue: 64,
            slow_after: Duration::from_secs(5),
            auth_check: Duration::from_secs(1),
        }
    }
}

/// Commands a transport may have in flight to the connection's task.
const COMMAND_QUEUE: usize = MAX_CHANNELS * 2;

/// The transport's end of a live connection: send commands, take frames.
/// Dropping it ends the connection's task.
#[derive(Debug)]
pub struct LiveConnection {
    commands: mpsc::Sender<LiveCommand>,
    frames: mpsc::Receiver<LiveFrame>,
    closing: Option<oneshot::Receiver<LiveFrame>>,
}

impl LiveConnection {
    /// Hands a command to the connection; false when too many are waiting
    /// (the client sends faster than commands are handled) or the
    /// connection has ended.
    pub fn command(&self, command: LiveCommand) -> bool {
        self.commands.try_send(command).is_ok()
    }

    /// The next frame to send. A [`LiveFrame::Closing`] is the last; after
    /// it (or when the task ended without one) this returns `None`.
    pub async fn next(&mut self) -> Option<LiveFrame> {
        let closing = self.closing.as_mut()?;
        tokio::select! {
            biased;
            closing = closing => {
                self.closing = None;
                closing.ok()
            }
            frame = self.frames.recv() => {
                if frame.is_none() {
                    self.closing = None;
                }
                frame
            }
        }
    }
}

impl LiveHub {
    /// Opens a live connection for `principal`: a task that follows the
    /// channels the commands name (each checked against the principal)
    /// until the transport drops its end or the task closes it.
    pub fn connect(
        self: &Arc<Self>,
        principal: Principal,
        settings: ConnectionSettings,
    ) -> LiveConnection {
        self.open(Some(principal), settings)
    }

    /// Opens a live connection for a visitor without a token: it may follow
    /// the public channels only (`product:{id}`), and nothing about it
    /// expires or can be revoked; the server's stop still closes it.
    pub fn connect_guest(self: &Arc<Self>, settings: ConnectionSettings) -> LiveConnection {
        self.open(None, settings)
    }

    fn open(
        self: &Arc<Self>,
        principal: Option<Principal>,
        settings: ConnectionSettings,
    ) -> LiveConnection {
        let (commands, command_queue) = mpsc::channel(COMMAND_QUEUE);
        let (frame_queue, frames) = mpsc::channel(settings.queue.max(1));
        let (closing_sender, closing) = oneshot::channel();
        let expiry = principal.as_ref().map_or(GUEST_LIFETIME, |principal| {
            (principal.expires_at - chrono::Utc::now())
                .to_std()
                .unwrap_or_default()
        });
        let mut auth_check = tokio::time::interval(settings.auth_check);
        auth_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        auth_check.reset();
        let user = principal.as_ref().map(|principal| principal.user_id);
        // A guest is no user: not in the presence, never revoked (a watch
        // whose sender is gone never rings).
        let revoked = match user {
            Some(user) => self.connected(user),
            None => watch::channel(0).1,
        };
        let task = Task {
            slow_after: settings.slow_after,
            frames: frame_queue,
            followers: StreamMap::new(),
            checks: Checks {
                hub: self.clone(),
                principal,
                expiry: Box::pin(tokio::time::sleep(expiry)),
                auth_check,
                revoked,
                in_flight: None,
            },
        };
        metrics::gauge!("orderflow_live_connections").increment(1.0);
        let hub = self.clone();
        tokio::spawn(async move {
            if let Some((reason, detail)) = task.run(command_queue).await {
                metrics::counter!("orderflow_live_closed_total", "reason" => reason.as_str())
                    .increment(1);
                let _ = closing_sender.send(LiveFrame::Closing { reason, detail });
            }
            metrics::gauge!("orderflow_live_connections").decrement(1.0);
            if let Some(user) = user {
                hub.disconnected(user);
            }
        });
        LiveConnection {
            commands,
            frames,
            closing: Some(closing),
        }
    }
}

/// Why the task stopped: `Some` when the server closes the connection (the
/// client is told why), `None` when the client went away.
type End = Option<(CloseReason, String)>;

struct Task {
    slow_after: Duration,
    frames: mpsc::Sender<LiveFrame>,
    followers: StreamMap<String, BoxStream<'static, StoreResult<Arc<LiveMessage>>>>,
    checks: Checks,
}

/// How long a guest's connection may stay: like a token's, it ends some
/// time (the browser reconnects), so no connection lives forever.
const GUEST_LIFETIME: Duration = Duration::from_secs(3600);

/// What keeps a connection open: a token not expired, not revoked.
struct Checks {
    hub: Arc<LiveHub>,
    /// None for a guest (public channels only).
    principal: Option<Principal>,
    expiry: std::pin::Pin<Box<Sleep>>,
    auth_check: Interval,
    /// Rung when a revocation of the user's tokens is heard: check now.
    revoked: watch::Receiver<u64>,
    /// The revocation check under way. A task of its own, so that the
    /// connection's `select!` dropping [`Checks::fail`] (a message won the
    /// race) does not cancel it: with Redis the check waits on the network,
    /// and a busy connection would otherwise never finish one.
    in_flight: Option<JoinHandle<Result<(), CoreError>>>,
}

fn expired() -> (CloseReason, String) {
    (
        CloseReason::TokenExpired,
        "your access token expired; connect again with a fresh one and your last positions".into(),
    )
}

impl Checks {
    /// Waits until the token expires or a revocation check fails; never
    /// returns while the principal is still let in. Cancel-safe.
    async fn fail(&mut self) -> (CloseReason, String) {
        let hub = self.hub.clone();
        tokio::select! {
            () = hub.stopping.cancelled() => (
                CloseReason::Restarting,
                "this server is restarting; connect again with your last positions".into(),
            ),
            failed = self.auth_fails() => failed,
        }
    }

    /// [`fail`](Self::fail) without the server stopping.
    async fn auth_fails(&mut self) -> (CloseReason, String) {
        loop {
            let Some(check) = &mut self.in_flight else {
                tokio::select! {
                    () = &mut self.expiry => return expired(),
                    _ = self.auth_check.tick() => {}
                    rung = self.revoked.changed() => if rung.is_err() {
                        // Never while the connection counts; ticks only.
                        std::future::pending::<()>().await;
                    },
                }
                // A revocation heard from now on asks for another check.
                self.revoked.borrow_and_update();
                // A guest has nothing to check: only its time runs out.
                let Some(principal) = self.principal.clone() else {
                    continue;
                };
                let hub = self.hub.clone();
                self.in_flight = Some(tokio::spawn(async move {
                    hub.auth.still_valid(&principal).await
                }));
                continue;
            };
            tokio::select! {
                () = &mut self.expiry => return expired(),
                checked = check => {
                    self.in_flight = None;
                    match checked {
                        Ok(Ok(())) => {}
                        Ok(Err(CoreError::Unauthorized(why))) => {
                            return (CloseReason::LoggedOut, format!("{why}; log in again"));
                        }
                        // The revocation list could not answer: keep the
                        // connection and ask again at the next check.
                        Ok(Err(error)) => {
                            tracing::warn!(%error, "live connection: revocation check failed")
                        }
                        Err(error) => {
                            tracing::warn!(%error, "live connection: revocation check failed")
                        }
                    }
                }
            }
        }
    }
}

impl Task {
    async fn run(mut self, mut commands: mpsc::Receiver<LiveCommand>) -> End {
        loop {
            let frame = tokio::select! {
                biased;
                end = self.checks.fail() => return Some(end),
                command = commands.recv() => match command {
                    Some(command) => self.handle(command).await,
                    None => return None,
                },
                Some((_, next)) = self.followers.next(), if !self.followers.is_empty() => match next {
                    Ok(message) => LiveFrame::Message(message),
                    Err(error) => {
                        tracing::warn!(%error, "live connection closed: reading a channel failed");
                        return Some((
                            CloseReason::Unavailable,
                            "the server could not read a channel; reconnect with your last positions".into(),
                        ));
                    }
                },
                () = self.frames.closed() => return None,
            };
            if let Err(end) = self.deliver(frame).await {
                return end;
            }
        }
    }

    /// Queues `frame` once there is room; ends the connection when the
    /// client does not make room within `slow_after` (or goes away, or the
    /// checks fail meanwhile).
    async fn deliver(&mut self, frame: LiveFrame) -> Result<(), End> {
        let deadline = tokio::time::sleep_until(Instant::now() + self.slow_after);
        tokio::pin!(deadline);
        tokio::select! {
            biased;
            end = self.checks.fail() => Err(Some(end)),
            permit = self.frames.reserve() => match permit {
                Ok(permit) => {
                    permit.send(frame);
                    Ok(())
                }
                Err(_) => Err(None),
            },
            () = &mut deadline => Err(Some((
                CloseReason::Slow,
                format!(
                    "you did not read your messages for {} s; reconnect with your last positions",
                    self.slow_after.as_secs_f64()
                ),
            ))),
        }
    }

    async fn handle(&mut self, command: LiveCommand) -> LiveFrame {
        match command {
            LiveCommand::Subscribe { channel, position } => {
                match self.subscribe(&channel, position).await {
                    Ok(frame) => frame,
                    Err(error) => LiveFrame::Error {
                        channel: Some(channel),
                        problem: error.problem().to_json(),
                    },
                }
            }
            LiveCommand::Unsubscribe { channel } => {
                self.followers.remove(&channel);
                LiveFrame::Unsubscribed { channel }
            }
            LiveCommand::Ping {} => LiveFrame::Pong,
        }
    }

    async fn subscribe(&mut self, name: &str, after: Option<i64>) -> Result<LiveFrame, CoreError> {
        let channel = LiveChannel::parse(name).ok_or_else(|| {
            orderflow_domain::ValidationError::new(
                "channel",
                format!("{name:?} is not a channel (known: {KNOWN_CHANNELS})"),
            )
        })?;
        channel.check_follower(self.checks.principal.as_ref())?;
        let name = channel.name();
        if !self.followers.contains_key(&name) && self.followers.len() >= MAX_CHANNELS {
            return Err(orderflow_domain::ValidationError::new(
                "channel",
                format!("at most {MAX_CHANNELS} channels per connection"),
            )
            .into());
        }
        if after.is_some_and(|position| position < 0) {
            return Err(
                orderflow_domain::ValidationError::new("position", "must be 0 or more").into(),
            );
        }
        let follower = self.checks.hub.follow(channel, after).await?;
        let frame = LiveFrame::Subscribed {
            channel: name.clone(),
            position: follower.position(),
            recovered: follower.recovered(),
        };
        self.followers.insert(name, follower.into_stream());
        Ok(frame)
    }
}
