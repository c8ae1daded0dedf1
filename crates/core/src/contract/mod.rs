//! Port contract scenarios, written once and run against every adapter.
