//! Where a pod is in its life on this node: the pod worker's state
//! machine.
//!
//! The worker ([`super::worker::Worker`]) does the runtime and API calls;
//! this module only says which phase follows which, in one function
//! ([`Phase::on`]), so that a combination such as "finished but still
//! holding a sandbox" or "terminated but retrying its sandbox" cannot be
//! represented. Each phase carries the data that exists only in it: the
//! sandbox's id and IP only while there is a ready sandbox, the retry
//! back-off only while there is none.
//!
//! ```text
//!            SandboxFailed                 Steady(b)
//!              ┌─────┐                      ┌────┐
//!              ▼     │     SandboxReady     ▼    │
//!  new ──► NoSandbox ─┴──────────────────► Running
//!              ▲                              │
//!              └──────────── SandboxLost ─────┘
//!   NoSandbox/Running ── Completed ──► Finished{Completed}
//!   NoSandbox/Running/Finished{Completed} ── Evicted ──► Finished{Evicted}
//!   NoSandbox ── Rejected ──► Finished{Rejected}
//!   Finished{_, stopped: false} ── SandboxesStopped ──► Finished{_, stopped: true}
//!   NoSandbox/Running/Finished ── Deleting ──► Terminating{remove: true}
//!   any but Done ── Gone ──► Terminating{remove: false}
//!     (Terminating keeps the IP of the sandbox Running had, for the
//!     pre-stop hooks)
//!   Terminating{remove: true} ── ContainersStopped ──► Terminated
//!   Terminating{remove: false} ── ContainersStopped ──► Done
//!   Terminated ── Removed ──► Done
//! ```
//!
//! Any other event in a phase is not a transition: [`Phase::on`] returns
//! `None` and the worker keeps its phase (and logs the event at debug).

use std::time::{Duration, Instant};

/// The pod's ready sandbox as the worker knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sandbox {
    /// The CRI sandbox id.
    pub id: String,
    /// The pod's IP in it (the node's IP with hostNetwork; empty when the
    /// runtime reported none).
    pub ip: String,
}

/// Why a pod ended: nothing of it runs again on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Its phase in the API is `Succeeded` or `Failed`.
    Completed,
    /// Evicted under node pressure by this node.
    Evicted,
    /// Refused at admission (node pressure): it never started.
    Rejected,
}

/// The phase of a pod on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// No ready sandbox: the next turn adopts or creates one. After a
    /// failed creation the next attempt waits until `retry_at`.
    NoSandbox {
        /// Creations failed in a row (the back-off doubles with each).
        failures: u32,
        /// No creation before this.
        retry_at: Option<Instant>,
    },
    /// The sandbox runs: containers are started, restarted and probed.
    Running {
        /// The sandbox.
        sandbox: Sandbox,
        /// The last turn found everything running and had nothing to do:
        /// the worker sleeps until a probe is due or the node's relist
        /// sees a container change, instead of looking every second.
        steady: bool,
    },
    /// Nothing runs again. The sandboxes are stopped (their IPs go back)
    /// but kept with their exited containers, so that `kubectl logs`
    /// still reads them, until the pod is deleted.
    Finished {
        /// Why it ended.
        ending: Ending,
        /// Every sandbox of the pod has been stopped.
        sandboxes_stopped: bool,
    },
    /// Its containers are being stopped (pre-stop hooks, SIGTERM, then
    /// SIGKILL after the grace period) and its sandboxes and files
    /// removed.
    Terminating {
        /// The API object is to be deleted afterwards (a graceful delete
        /// this node completes); `false` when it is already gone.
        remove_object: bool,
        /// The sandbox that was running, whose IP the pre-stop hooks
        /// reach.
        sandbox: Option<Sandbox>,
    },
    /// Everything of the pod is stopped and removed on this node; the API
    /// object's final deletion is pending (retried each turn).
    Terminated,
    /// The pod is gone and everything of it is cleaned up: the worker
    /// ends.
    Done,
}

/// What happens to a pod, as the worker observes or decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A ready sandbox was adopted or created.
    SandboxReady(Sandbox),
    /// Creating the sandbox failed at `at`.
    SandboxFailed {
        /// When.
        at: Instant,
    },
    /// The sandbox is no longer ready (it died, taking its network).
    SandboxLost,
    /// A turn ended with everything running (`true`) or with something
    /// to do (`false`).
    Steady(bool),
    /// The pod's phase in the API is `Succeeded` or `Failed`.
    Completed,
    /// This node evicts the pod under node pressure. Not an event for a
    /// pod being deleted: its worker stops the containers within the
    /// turn that saw the deletion, so an eviction arriving later finds
    /// nothing to kill.
    Evicted,
    /// This node refuses a pod new to it (admission under node
    /// pressure): nothing of it starts.
    Rejected,
    /// Every sandbox of a finished pod was stopped.
    SandboxesStopped,
    /// The pod has a deletion timestamp: stop it gracefully, then delete
    /// the object.
    Deleting,
    /// The API object is gone (force-deleted, or a status write found
    /// none): stop everything, nothing to delete.
    Gone,
    /// Every container is stopped and the sandboxes and files removed.
    ContainersStopped,
    /// The API object was deleted (or was already gone).
    Removed,
}

/// The first delay before another sandbox attempt after `failures`
/// failed ones: 2 s, doubling, at most 64 s.
pub fn sandbox_backoff(failures: u32) -> Duration {
    Duration::from_secs(1 << failures.min(6))
}

impl Phase {
    /// The phase of a new worker.
    pub fn new() -> Phase {
        Phase::NoSandbox {
            failures: 0,
            retry_at: None,
        }
    }

    /// The phase after `event`, or `None` when `event` means nothing in
    /// this phase (the phase stays as it is).
    pub fn on(&self, event: Event) -> Option<Phase> {
        use Event as E;
        use Phase as P;
        Some(match (self, event) {
            (P::NoSandbox { .. }, E::SandboxReady(sandbox)) => P::Running {
                sandbox,
                steady: false,
            },
            (P::NoSandbox { failures, .. }, E::SandboxFailed { at }) => {
                let failures = failures + 1;
                P::NoSandbox {
                    failures,
                    retry_at: Some(at + sandbox_backoff(failures)),
                }
            }
            (P::Running { .. }, E::SandboxLost) => P::new(),
            (P::Running { sandbox, .. }, E::Steady(steady)) => P::Running {
                sandbox: sandbox.clone(),
                steady,
            },
            (P::NoSandbox { .. } | P::Running { .. }, E::Completed) => P::Finished {
                ending: Ending::Completed,
                sandboxes_stopped: false,
            },
            (
                P::NoSandbox { .. }
                | P::Running { .. }
                | P::Finished {
                    ending: Ending::Completed,
                    ..
                },
                E::Evicted,
            ) => P::Finished {
                ending: Ending::Evicted,
                sandboxes_stopped: false,
            },
            (P::NoSandbox { .. }, E::Rejected) => P::Finished {
                ending: Ending::Rejected,
                sandboxes_stopped: false,
            },
            (
                P::Finished {
                    ending,
                    sandboxes_stopped: false,
                },
                E::SandboxesStopped,
            ) => P::Finished {
                ending: *ending,
                sandboxes_stopped: true,
            },
            (P::NoSandbox { .. } | P::Running { .. } | P::Finished { .. }, E::Deleting) => {
                P::Terminating {
                    remove_object: true,
                    sandbox: self.sandbox().cloned(),
                }
            }
            (P::Done, E::Gone) => return None,
            (P::Terminating { sandbox, .. }, E::Gone) => P::Terminating {
                remove_object: false,
                sandbox: sandbox.clone(),
            },
            (_, E::Gone) => P::Terminating {
                remove_object: false,
                sandbox: self.sandbox().cloned(),
            },
            (P::Terminating { remove_object, .. }, E::ContainersStopped) => {
                if *remove_object {
                    P::Terminated
                } else {
                    P::Done
                }
            }
            (P::Terminated, E::Removed) => P::Done,
            _ => return None,
        })
    }

    /// The ready sandbox, in the one phase that has it.
    pub fn sandbox(&self) -> Option<&Sandbox> {
        match self {
            Phase::Running { sandbox, .. } => Some(sandbox),
            _ => None,
        }
    }

    /// The pod's IP while it has one: the ready sandbox's, or while
    /// terminating, the IP of the sandbox being stopped.
    pub fn pod_ip(&self) -> Option<&str> {
        match self {
            Phase::Running { sandbox, .. }
            | Phase::Terminating {
                sandbox: Some(sandbox),
                ..
            } => Some(&sandbox.ip),
            _ => None,
        }
    }

    /// Whether containers may be started in this phase.
    pub fn runs(&self) -> bool {
        matches!(self, Phase::NoSandbox { .. } | Phase::Running { .. })
    }

    /// Whether the last turn left the pod steady (see [`Phase::Running`]).
    pub fn steady(&self) -> bool {
        matches!(self, Phase::Running { steady: true, .. })
    }
}

impl Default for Phase {
    fn default() -> Phase {
        Phase::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sandbox() -> Sandbox {
        Sandbox {
            id: "sb1".into(),
            ip: "10.42.0.7".into(),
        }
    }

    fn running(steady: bool) -> Phase {
        Phase::Running {
            sandbox: sandbox(),
            steady,
        }
    }

    fn finished(ending: Ending, sandboxes_stopped: bool) -> Phase {
        Phase::Finished {
            ending,
            sandboxes_stopped,
        }
    }

    /// One of every phase (with both values of its flags).
    fn every_phase() -> Vec<Phase> {
        let at = Instant::now();
        vec![
            Phase::new(),
            Phase::NoSandbox {
                failures: 3,
                retry_at: Some(at),
            },
            running(false),
            running(true),
            finished(Ending::Completed, false),
            finished(Ending::Completed, true),
            finished(Ending::Evicted, false),
            finished(Ending::Evicted, true),
            Phase::Terminating {
                remove_object: true,
                sandbox: Some(sandbox()),
            },
            Phase::Terminating {
                remove_object: false,
                sandbox: None,
            },
            Phase::Terminated,
            Phase::Done,
        ]
    }

    fn every_event() -> Vec<Event> {
        vec![
            Event::SandboxReady(sandbox()),
            Event::SandboxFailed { at: Instant::now() },
            Event::SandboxLost,
            Event::Steady(true),
            Event::Steady(false),
            Event::Completed,
            Event::Evicted,
            Event::SandboxesStopped,
            Event::Deleting,
            Event::Gone,
            Event::ContainersStopped,
            Event::Removed,
        ]
    }

    #[test]
    fn a_pod_gets_its_sandbox_and_runs() {
        let p = Phase::new();
        assert_eq!(p.sandbox(), None);
        let p = p.on(Event::SandboxReady(sandbox())).unwrap();
        assert_eq!(p, running(false));
        assert_eq!(p.sandbox(), Some(&sandbox()));
        let p = p.on(Event::Steady(true)).unwrap();
        assert!(p.steady());
        assert_eq!(p.sandbox(), Some(&sandbox()));
        let p = p.on(Event::Steady(false)).unwrap();
        assert_eq!(p, running(false));
    }

    #[test]
    fn failed_sandboxes_back_off_and_a_lost_one_is_recreated_at_once() {
        let at = Instant::now();
        let p = Phase::new().on(Event::SandboxFailed { at }).unwrap();
        assert_eq!(
            p,
            Phase::NoSandbox {
                failures: 1,
                retry_at: Some(at + Duration::from_secs(2)),
            }
        );
        let mut p = p;
        for _ in 0..10 {
            p = p.on(Event::SandboxFailed { at }).unwrap();
        }
        assert_eq!(
            p,
            Phase::NoSandbox {
                failures: 11,
                retry_at: Some(at + Duration::from_secs(64)),
            },
            "the back-off stops at 64 s"
        );
        // A ready sandbox forgets the failures; losing it retries at once.
        let p = p.on(Event::SandboxReady(sandbox())).unwrap();
        assert_eq!(p.on(Event::SandboxLost).unwrap(), Phase::new());
    }

    #[test]
    fn a_finished_pod_stops_its_sandboxes_once_and_runs_nothing() {
        for from in [Phase::new(), running(true)] {
            let p = from.on(Event::Completed).unwrap();
            assert_eq!(p, finished(Ending::Completed, false));
            assert!(!p.runs());
            assert_eq!(p.sandbox(), None);
            let p = p.on(Event::SandboxesStopped).unwrap();
            assert_eq!(p, finished(Ending::Completed, true));
            // Nothing brings a sandbox or a restart back.
            assert_eq!(p.on(Event::SandboxesStopped), None);
            assert_eq!(p.on(Event::SandboxReady(sandbox())), None);
            assert_eq!(p.on(Event::SandboxLost), None);
            assert_eq!(p.on(Event::Steady(true)), None);
            assert_eq!(p.on(Event::Completed), None);
        }
    }

    #[test]
    fn only_a_pod_without_a_sandbox_is_rejected() {
        let p = Phase::new().on(Event::Rejected).unwrap();
        assert_eq!(p, finished(Ending::Rejected, false));
        assert!(!p.runs());
        assert_eq!(p.on(Event::SandboxReady(sandbox())), None);
        assert_eq!(p.on(Event::Rejected), None);
        assert_eq!(p.on(Event::Evicted), None, "a rejected pod is not evicted");
        assert_eq!(running(false).on(Event::Rejected), None);
        assert_eq!(finished(Ending::Completed, true).on(Event::Rejected), None);
        // Deleted later, it goes as any finished pod.
        let p = p.on(Event::SandboxesStopped).unwrap();
        assert!(matches!(
            p.on(Event::Deleting),
            Some(Phase::Terminating {
                remove_object: true,
                ..
            })
        ));
    }

    #[test]
    fn eviction_happens_once() {
        for from in [
            Phase::new(),
            running(false),
            finished(Ending::Completed, false),
            finished(Ending::Completed, true),
        ] {
            let p = from.on(Event::Evicted).unwrap();
            assert_eq!(p, finished(Ending::Evicted, false));
            assert_eq!(p.on(Event::Evicted), None, "evicted twice");
            let p = p.on(Event::SandboxesStopped).unwrap();
            assert_eq!(p.on(Event::Evicted), None, "evicted twice");
            assert_eq!(p.on(Event::Completed), None);
        }
        for from in [
            Phase::Terminating {
                remove_object: true,
                sandbox: None,
            },
            Phase::Terminated,
            Phase::Done,
        ] {
            assert_eq!(from.on(Event::Evicted), None, "{from:?}");
        }
    }

    #[test]
    fn graceful_deletion_stops_then_removes_the_object() {
        for from in [
            Phase::new(),
            running(true),
            finished(Ending::Completed, true),
            finished(Ending::Evicted, false),
        ] {
            let p = from.on(Event::Deleting).unwrap();
            assert_eq!(
                p,
                Phase::Terminating {
                    remove_object: true,
                    sandbox: from.sandbox().cloned(),
                }
            );
            // The pre-stop hooks still reach the pod's IP.
            assert_eq!(p.pod_ip(), from.sandbox().map(|s| s.ip.as_str()));
            assert_eq!(p.sandbox(), None);
            assert!(!p.runs());
            assert_eq!(p.on(Event::Deleting), None);
            let p = p.on(Event::ContainersStopped).unwrap();
            assert_eq!(p, Phase::Terminated);
            // A failed delete of the object leaves it Terminated (retried);
            // it never runs or terminates again.
            assert_eq!(p.on(Event::Deleting), None);
            assert_eq!(p.on(Event::SandboxReady(sandbox())), None);
            assert_eq!(p.on(Event::ContainersStopped), None);
            assert_eq!(p.on(Event::Removed).unwrap(), Phase::Done);
        }
    }

    #[test]
    fn a_pod_gone_from_the_api_is_stopped_from_any_phase() {
        for from in every_phase() {
            let Some(p) = from.on(Event::Gone) else {
                assert_eq!(from, Phase::Done);
                continue;
            };
            let sandbox = match &from {
                Phase::Terminating { sandbox, .. } => sandbox.clone(),
                other => other.sandbox().cloned(),
            };
            assert_eq!(
                p,
                Phase::Terminating {
                    remove_object: false,
                    sandbox,
                },
                "{from:?}"
            );
            assert_eq!(p.on(Event::ContainersStopped).unwrap(), Phase::Done);
        }
    }

    #[test]
    fn done_is_final() {
        for ev in every_event() {
            assert_eq!(Phase::Done.on(ev.clone()), None, "{ev:?}");
        }
    }

    /// Every (phase, event) pair: the legal ones are exactly those of the
    /// table in the module documentation, and no result holds a sandbox
    /// outside `Running`.
    #[test]
    fn the_transition_table() {
        let mut legal = 0;
        for from in every_phase() {
            for ev in every_event() {
                let Some(to) = from.on(ev.clone()) else {
                    continue;
                };
                legal += 1;
                let expected = match (&from, &ev) {
                    (Phase::NoSandbox { .. }, Event::SandboxReady(_)) => {
                        matches!(to, Phase::Running { steady: false, .. })
                    }
                    (Phase::NoSandbox { failures, .. }, Event::SandboxFailed { .. }) => {
                        matches!(to, Phase::NoSandbox { failures: f, retry_at: Some(_) } if f == failures + 1)
                    }
                    (Phase::Running { .. }, Event::SandboxLost) => to == Phase::new(),
                    (Phase::Running { .. }, Event::Steady(s)) => to.steady() == *s,
                    (Phase::NoSandbox { .. } | Phase::Running { .. }, Event::Completed) => {
                        to == finished(Ending::Completed, false)
                    }
                    (
                        Phase::NoSandbox { .. }
                        | Phase::Running { .. }
                        | Phase::Finished {
                            ending: Ending::Completed,
                            ..
                        },
                        Event::Evicted,
                    ) => to == finished(Ending::Evicted, false),
                    (
                        Phase::Finished {
                            ending,
                            sandboxes_stopped: false,
                        },
                        Event::SandboxesStopped,
                    ) => to == finished(*ending, true),
                    (
                        Phase::NoSandbox { .. } | Phase::Running { .. } | Phase::Finished { .. },
                        Event::Deleting,
                    ) => matches!(
                        to,
                        Phase::Terminating {
                            remove_object: true,
                            ..
                        }
                    ),
                    (_, Event::Gone) => matches!(
                        to,
                        Phase::Terminating {
                            remove_object: false,
                            ..
                        }
                    ),
                    (
                        Phase::Terminating {
                            remove_object: true,
                            ..
                        },
                        Event::ContainersStopped,
                    ) => to == Phase::Terminated,
                    (
                        Phase::Terminating {
                            remove_object: false,
                            ..
                        },
                        Event::ContainersStopped,
                    ) => to == Phase::Done,
                    (Phase::Terminated, Event::Removed) => to == Phase::Done,
                    _ => false,
                };
                assert!(expected, "{from:?} --{ev:?}--> {to:?} is not in the table");
                if !matches!(to, Phase::Running { .. }) {
                    assert_eq!(to.sandbox(), None);
                }
            }
        }
        // 2 NoSandbox x {Ready, Failed, Completed, Evicted, Deleting, Gone}
        // + 2 Running x {Lost, Steady x2, Completed, Evicted, Deleting, Gone}
        // + 4 Finished x {Deleting, Gone} + 2 Completed x Evicted
        // + 2 not-stopped x SandboxesStopped + 2 Terminating x {Gone,
        // Stopped} + Terminated x {Gone, Removed}.
        assert_eq!(legal, 12 + 14 + 8 + 2 + 2 + 4 + 2);
    }
}
