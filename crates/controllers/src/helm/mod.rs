//! The HelmChart controller (`helm.cattle.io/v1`, as RKE2's
//! k3s-io/helm-controller): CRDs ([`crd`]), the Job a chart becomes
//! ([`job`]) and the leader-elected loop ([`run`]). The Jobs run
//! `rke2 helm-job` on the addon image, which drives the real `helm`.

mod controller;
pub mod crd;
pub mod job;

pub use controller::{FINALIZER, error_line, helmchart_resource, helmchartconfig_resource, run};
pub use job::JobSettings;
