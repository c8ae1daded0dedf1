//! A TLS terminator on a loopback port: each connection's TLS is ended here
//! and its bytes are copied to and from a plaintext port (the broker's).
//!
//! Why: tansu 0.6 serves no TLS itself (see the module above), and a Kafka
//! client's TLS settings are only proven by a handshake. The terminator
//! speaks TLS with the certificate of a [`TestPki`] (and, when asked,
//! requires a client certificate from the same CA), so a client's CA,
//! host-name check, client certificate and SASL inside TLS are all really
//! exercised. A Kafka broker's own TLS listener is not.

use std::net::TcpListener;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig, crypto};

use crate::pki::TestPki;

/// Runs until dropped, on a thread of its own (the test harness is
/// synchronous; the copying is async).
pub(super) struct TlsFront {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TlsFront {
    /// Serves TLS on `listener` (already bound, so a broker could advertise
    /// its port before this started) and forwards to `127.0.0.1:backend`.
    pub(super) fn start(
        listener: TcpListener,
        backend: u16,
        pki: &TestPki,
        client_auth: bool,
    ) -> anyhow::Result<TlsFront> {
        let acceptor = TlsAcceptor::from(Arc::new(server_config(pki, client_auth)?));
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("a runtime for the TLS terminator")?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("kafka-tls-front".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let listener = match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => listener,
                        Err(_) => return,
                    };
                    tokio::select! {
                        _ = stopped => {}
                        _ = accept(listener, acceptor, backend) => {}
                    }
                });
                // Dropping the runtime ends the connections' tasks.
            })
            .context("starting the TLS terminator's thread")?;
        Ok(TlsFront {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept(listener: tokio::net::TcpListener, acceptor: TlsAcceptor, backend: u16) {
    while let Ok((stream, _)) = listener.accept().await {
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            // A failed handshake (a client that does not trust the CA, or
            // has no certificate) just closes the connection, as a broker's
            // TLS listener would.
            let Ok(mut tls) = acceptor.accept(stream).await else {
                return;
            };
            let Ok(mut plain) = tokio::net::TcpStream::connect(("127.0.0.1", backend)).await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
        });
    }
}

fn server_config(pki: &TestPki, client_auth: bool) -> anyhow::Result<ServerConfig> {
    let provider = Arc::new(crypto::ring::default_provider());
    let certificates = CertificateDer::pem_file_iter(pki.server_cert())
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .context("reading the test server certificate")?;
    let key = PrivateKeyDer::from_pem_file(pki.server_key()).context("reading its key")?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = if client_auth {
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(pki.ca_cert()).context("reading the test CA")? {
            roots.add(ca.context("reading the test CA")?)?;
        }
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .context("a client-certificate verifier")?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    builder
        .with_single_cert(certificates, key)
        .context("the test server certificate and key")
}
