//! The port clients use for a restartable broker: each connection's Kafka
//! requests are passed on to tansu whole, and closing the front lets the
//! requests already passed on finish before any connection is cut.
//!
//! Why: on SIGTERM, tansu 0.6 waits 5 s and then aborts its connections'
//! tasks wherever they are, and its produce path (`tansu-storage`
//! `dynostore.rs`) stores the producer's next sequence number before the
//! batch itself. A produce aborted between the two leaves a sequence number
//! for a batch never stored; the producer's retry after the restart is
//! answered `DuplicateSequenceNumber`, which an idempotent producer rightly
//! takes as "written already", and an acknowledged record is gone (seen in
//! the fault matrix: one `payment.succeeded` event of ~3,000, its order
//! stuck in `reserved`). A Kafka broker keeps the producer's state in the
//! log itself, so no restart can do that; with this front a tansu restart
//! cannot either, since tansu is only stopped once no request is left
//! half-done. For the clients the broker is as gone as it would be: their
//! connections are closed and the port refuses new ones until
//! [`RequestFront::open`] again.
//!
//! A frame is a 4-byte big-endian length and that many bytes, in both
//! directions; a broker answers one connection's requests in order, one
//! response each (no request here uses `acks=0`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};

/// How long a closing front waits for the answers to requests passed on.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

enum Command {
    Open(std::sync::mpsc::Sender<anyhow::Result<()>>),
    Close(std::sync::mpsc::Sender<()>),
}

/// Runs on a thread of its own (its callers are synchronous) until dropped.
pub(super) struct RequestFront {
    commands: Option<mpsc::UnboundedSender<Command>>,
    thread: Option<JoinHandle<()>>,
}

impl RequestFront {
    /// A front for clients on `127.0.0.1:port` to tansu on
    /// `127.0.0.1:backend`, closed until [`open`](Self::open).
    pub(super) fn new(port: u16, backend: u16) -> anyhow::Result<RequestFront> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("a runtime for the broker's front")?;
        let (commands, received) = mpsc::unbounded_channel();
        let thread = std::thread::Builder::new()
            .name("kafka-request-front".into())
            .spawn(move || runtime.block_on(serve(port, backend, received)))
            .context("starting the broker front's thread")?;
        Ok(RequestFront {
            commands: Some(commands),
            thread: Some(thread),
        })
    }

    fn ask<T>(&self, command: impl FnOnce(std::sync::mpsc::Sender<T>) -> Command) -> Option<T> {
        let (reply, answer) = std::sync::mpsc::channel();
        self.commands.as_ref()?.send(command(reply)).ok()?;
        answer.recv().ok()
    }

    /// Listens on the port (again). Does nothing when open.
    pub(super) fn open(&self) -> anyhow::Result<()> {
        self.ask(Command::Open)
            .unwrap_or_else(|| Err(anyhow::anyhow!("the broker's front has stopped")))
    }

    /// Stops listening and passing requests on, waits (at most
    /// [`DRAIN_TIMEOUT`]) until the requests passed on are answered, then
    /// closes every connection. Does nothing when closed.
    pub(super) fn close(&self) {
        let _ = self.ask(Command::Close);
    }
}

impl Drop for RequestFront {
    fn drop(&mut self) {
        drop(self.commands.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The front's loop: opens and closes on command, ends when the commands
/// do (dropping its connections).
async fn serve(port: u16, backend: u16, mut commands: mpsc::UnboundedReceiver<Command>) {
    let mut open: Option<(watch::Sender<bool>, tokio::task::JoinHandle<()>)> = None;
    while let Some(command) = commands.recv().await {
        match command {
            Command::Open(reply) => {
                let result = if open.is_some() {
                    Ok(())
                } else {
                    match TcpListener::bind(("127.0.0.1", port)).await {
                        Ok(listener) => {
                            let (closing, closed) = watch::channel(false);
                            let task = tokio::spawn(accept(listener, backend, closed));
                            open = Some((closing, task));
                            Ok(())
                        }
                        Err(e) => Err(anyhow::Error::new(e)
                            .context(format!("binding the broker's port {port} again"))),
                    }
                };
                let _ = reply.send(result);
            }
            Command::Close(reply) => {
                if let Some((closing, task)) = open.take() {
                    let _ = closing.send(true);
                    let _ = task.await;
                }
                let _ = reply.send(());
            }
        }
    }
}

/// Accepts until closing, then waits for every connection to finish.
async fn accept(listener: TcpListener, backend: u16, mut closing: watch::Receiver<bool>) {
    let mut connections = tokio::task::JoinSet::new();
    let for_connections = closing.clone();
    loop {
        tokio::select! {
            _ = closing.wait_for(|closing| *closing) => break,
            accepted = listener.accept() => {
                if let Ok((client, _)) = accepted {
                    connections.spawn(pass_on(client, backend, for_connections.clone()));
                }
            }
        }
    }
    // Refuses new connections from here on.
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// One client connection: requests to tansu and answers back, frame by
/// frame, until either side closes or the front closes (then the requests
/// passed on are answered first).
async fn pass_on(client: TcpStream, backend: u16, mut closing: watch::Receiver<bool>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", backend)).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    let outstanding = Arc::new(AtomicUsize::new(0));
    let answered = Arc::new(Notify::new());
    let answers = {
        let (outstanding, answered) = (outstanding.clone(), answered.clone());
        async move {
            while let Ok(frame) = read_frame(&mut from_server).await {
                if to_client.write_all(&frame).await.is_err() {
                    break;
                }
                outstanding.fetch_sub(1, Ordering::SeqCst);
                answered.notify_waiters();
            }
        }
    };
    let requests = async move {
        loop {
            // A frame read half-way when closing comes is dropped: nothing
            // of it reached tansu.
            let frame = tokio::select! {
                biased;
                _ = closing.wait_for(|closing| *closing) => break,
                frame = read_frame(&mut from_client) => frame,
            };
            let Ok(frame) = frame else { return };
            outstanding.fetch_add(1, Ordering::SeqCst);
            if to_server.write_all(&frame).await.is_err() {
                return;
            }
        }
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
            loop {
                let notified = answered.notified();
                if outstanding.load(Ordering::SeqCst) == 0 {
                    break;
                }
                notified.await;
            }
        })
        .await;
    };
    // Whichever ends first ends the connection: dropping the halves closes
    // both sockets.
    tokio::select! {
        () = answers => {}
        () = requests => {}
    }
}

/// A Kafka frame: its 4-byte length and its bytes.
async fn read_frame(from: &mut tokio::net::tcp::OwnedReadHalf) -> std::io::Result<Vec<u8>> {
    let mut size = [0; 4];
    from.read_exact(&mut size).await?;
    let length = usize::try_from(i32::from_be_bytes(size))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let mut frame = Vec::with_capacity(4 + length);
    frame.extend_from_slice(&size);
    frame.resize(4 + length, 0);
    from.read_exact(&mut frame[4..]).await?;
    Ok(frame)
}
