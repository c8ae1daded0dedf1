//! The `orderflow` binary as a library, so the integration tests build
//! exactly what `orderflow serve` runs.
//!
//! Map of the crate:
//! - [`cli`]: the commands (`serve`, `api`, `worker`, `relay`, `migrate`,
//!   `seed`, `import`, `consumers`, `dlq`, `keys`, `bench`) and what each prints.
//! - [`settings`]: typed settings from `ORDERFLOW_*` variables; secrets never print.
//! - [`app`]: the composition root: use cases wired, server, consumer
//!   groups and relay run and shut down.
//! - [`backends`]: which adapter serves each port (SQLite or PostgreSQL,
//!   embedded log or Kafka, in-process or Redis), chosen by the settings.
//! - [`import`]: `orderflow import`, the bulk catalog load (CSV or JSON lines).
//! - [`keys`]: the JWT key set kept in the data dir.
//! - [`seed`]: the demo catalog and shoppers.
//! - [`telemetry`]: logging and the Prometheus recorder.

pub mod app;
pub mod backends;
pub mod cli;
pub mod import;
pub mod keys;
pub mod seed;
pub mod settings;
pub mod telemetry;

pub use app::App;
pub use settings::Settings;
