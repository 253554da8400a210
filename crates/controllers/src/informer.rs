//! Shared informers: a reflector store kept current by a watch, as
//! client-go's informers are, for the loops that read many objects per pass
//! (node lifecycle, taint eviction).

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio_util::sync::CancellationToken;
use tracing::debug;

/// Starts a reflector over `api` that runs until `stop` and returns its
/// store. Lists come from the apiserver's watch cache (resourceVersion=0),
/// as client-go informers' do. `on_event` sees each event after the store
/// has applied it (a failed watch is retried with back-off and not shown);
/// `what` names the resource in the logs.
pub fn spawn<K, F>(
    api: Api<K>,
    what: &'static str,
    stop: &CancellationToken,
    mut on_event: F,
) -> Store<K>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + k8s_openapi::serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    F: FnMut(&watcher::Event<K>) + Send + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let stream = reflector::reflector(
        writer,
        watcher(api, watcher::Config::default().any_semantic()).default_backoff(),
    );
    let stop = stop.clone();
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream.take_until(stop.cancelled_owned()));
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(ev) => on_event(&ev),
                Err(e) => debug!(resource = what, error = %e, "watch failed; retrying"),
            }
        }
    });
    reader
}
