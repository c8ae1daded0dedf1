//! The `orderflow` binary as a library, so the integration tests build
//! exactly what `orderflow serve` runs.
//!
//! Map of the crate:
//! - [`cli`]: the commands (`serve`, `api`, `worker`, `migrate`, `seed`,
//!   `consumers`, `dlq`) and what each prints.
//! - [`settings`]: typed settings from `ORDERFLOW_*` variables; secrets never print.
//! - [`app`]: the composition root: adapters chosen from the settings, use
//!   cases wired, server and consumer groups run and shut down.
//! - [`keys`]: the JWT key set kept in the data dir.
//! - [`seed`]: the demo catalog and shoppers.
//! - [`telemetry`]: logging and the Prometheus recorder.

pub mod app;
pub mod cli;
pub mod keys;
pub mod seed;
pub mod settings;
pub mod telemetry;

pub use app::App;
pub use settings::Settings;
