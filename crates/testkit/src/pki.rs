//! A certificate authority made in the test, and the certificates it signs,
//! as PEM files in a temporary directory.
//!
//! Why generated: a TLS test must prove that orderflow trusts exactly the
//! CA it is told to (not the web PKI, not "anything"), so each test run has
//! a CA nobody else has, and a second one shows that a server signed by
//! another CA is refused. Nothing is checked in, nothing outlives the test.
//!
//! Every certificate names `127.0.0.1` and `localhost`, the addresses test
//! servers listen on. The server certificate is also valid for client
//! authentication: the nodes of a TLS Redis cluster present it to each other
//! on the cluster bus (`tls-cluster yes`), where the peer checks it as a
//! client certificate.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A CA, a server certificate and a client certificate, each with its key,
/// written as `ca.crt`, `server.crt`/`server.key`, `client.crt`/`client.key`.
pub struct TestPki {
    dir: tempfile::TempDir,
}

impl TestPki {
    /// Generates a fresh CA and signs a server and a client certificate
    /// with it.
    pub fn generate() -> anyhow::Result<TestPki> {
        let dir = tempfile::Builder::new()
            .prefix("orderflow-pki-")
            .tempdir()
            .context("creating a directory for the test certificates")?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "orderflow test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let ca = Issuer::new(ca_params, ca_key);
        write(dir.path(), "ca.crt", &ca_cert.pem())?;

        let leaves = [
            (
                "server",
                vec![
                    ExtendedKeyUsagePurpose::ServerAuth,
                    ExtendedKeyUsagePurpose::ClientAuth,
                ],
            ),
            ("client", vec![ExtendedKeyUsagePurpose::ClientAuth]),
        ];
        for (name, usages) in leaves {
            let key = KeyPair::generate()?;
            let mut params =
                CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])?;
            params
                .distinguished_name
                .push(DnType::CommonName, format!("orderflow test {name}"));
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = usages;
            let cert = params.signed_by(&key, &ca)?;
            write(dir.path(), &format!("{name}.crt"), &cert.pem())?;
            write(dir.path(), &format!("{name}.key"), &key.serialize_pem())?;
        }
        Ok(TestPki { dir })
    }

    /// The CA certificate (PEM): what a client trusts.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    pub fn server_cert(&self) -> PathBuf {
        self.dir.path().join("server.crt")
    }

    pub fn server_key(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// The client certificate, for servers that require one (mutual TLS).
    pub fn client_cert(&self) -> PathBuf {
        self.dir.path().join("client.crt")
    }

    pub fn client_key(&self) -> PathBuf {
        self.dir.path().join("client.key")
    }
}

fn write(dir: &Path, name: &str, pem: &str) -> anyhow::Result<()> {
    std::fs::write(dir.join(name), pem).with_context(|| format!("writing {name}"))
}
