//! What the process tells its operators: Prometheus metrics (every name in one module), logs
//! and traces.
pub mod access;
pub mod logging;
pub mod metrics;
pub mod output;
pub mod traces;
