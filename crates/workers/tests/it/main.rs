//! Integration tests of the consumer groups, in one binary: the runtime with
//! scripted handlers (`runtime`), and every group end to end (`end_to_end`),
//! both over the embedded SQLite store and log with simulated providers.
//! Tests drive `Consumer::process_batch` step by step; nothing sleeps to
//! wait for a worker.

mod end_to_end;
mod runtime;
mod support;
