//! The datastore role of an rke2 server.
//!
//! Two halves:
//! * [`etcd`] runs the real `etcd` binary as a child process: TLS on the
//!   client and peer ports, health waiting, restart when it dies, and a clean
//!   stop (the child also dies with us through `PR_SET_PDEATHSIG`, so a
//!   `kill -9` of the server never leaves an orphaned etcd).
//! * [`store`] is the only code that reads and writes the object keyspace:
//!   single-transaction, revision-checked creates, updates and deletes,
//!   paged range reads at a revision, and watches from a revision.
//! * [`object_store`] names what the apiserver needs of storage as the
//!   [`ObjectStore`] trait, which [`Store`] (etcd) and [`MemoryStore`]
//!   (in-memory, for unit tests of the verbs) implement; [`contract`]
//!   checks both against the same rules.
//!
//! Architecture invariant: nothing here knows about Kubernetes objects; keys
//! and values are bytes, versions are etcd revisions.

pub mod contract;
pub mod encryption;
pub mod etcd;
pub mod membership;
pub mod memory;
pub mod object_store;
pub mod store;

pub use encryption::{EncryptingStore, EncryptionConfig, EncryptionConfiguration};
pub use etcd::{EtcdConfig, EtcdError, EtcdProcess};
pub use membership::Member;
pub use memory::MemoryStore;
pub use object_store::{ObjectStore, SharedStore, WatchStream};
pub use store::{KeyValue, ListPage, Store, StoreError, WatchEvent, WatchEventKind};
