//! Kubernetes API machinery without IO: strategic merge patch, label and
//! field selectors, object name validation, human-readable ages,
//! resource quantities, the Node labels a kubelet may set and CronJob
//! schedules.
//!
//! Everything here is a pure function over `serde_json::Value` (or plain
//! strings) so the API server, the printers and the controllers can share
//! one implementation of the upstream semantics and test it in isolation.

#![warn(missing_docs)]

pub mod autoscaling;
pub mod cron;
pub mod duration;
pub mod eviction;
pub mod node_labels;
pub mod qos;
pub mod quantity;
pub mod quota;
pub mod selectors;
pub mod strategic_merge;
pub mod validation;

pub use duration::human_duration;
pub use quantity::{Quantity, QuantityError, parse_quantity};
pub use selectors::{
    FieldSelector, LabelSelector, SelectorError, label_selector_from_json, parse_field_selector,
    parse_label_selector,
};
pub use strategic_merge::{BuiltinSchema, ListStrategy, MergeSchema, PatchError, builtin_schema};
