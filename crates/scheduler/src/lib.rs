//! The default scheduler of an rke2 server, as a plain API client.
//!
//! [`run`] watches Nodes and Pods and binds every pending pod addressed to
//! `default-scheduler` to the best feasible node ([`predicates`]: taints
//! and tolerations, cordons, nodeSelector, required node affinity, host
//! ports, resource requests; replicas spread). A pod that fits nowhere gets
//! `PodScheduled=False`/`Unschedulable` and a `FailedScheduling` event in
//! upstream's words, and is retried when the cluster changes in a way that
//! could make room.
//!
//! Architecture invariant: only one scheduler may bind at a time, so the
//! caller runs [`run`] only while it holds the [`SCHEDULER_LEASE`] Lease
//! (`rke2_controllers::leader::run_elected`). A second one racing for a
//! moment is harmless: binding an already bound pod is a 409, which is
//! skipped.

pub mod predicates;
pub mod preemption;
mod scheduler;
pub mod volumes;

pub use scheduler::{SCHEDULER_NAME, run};

/// The Lease in `kube-system` whose holder runs the scheduler.
pub const SCHEDULER_LEASE: &str = "kube-scheduler";
