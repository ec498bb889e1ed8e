//! What the process tells its operators: Prometheus metrics (every name in one module) and logs.
pub mod logging;
pub mod metrics;
