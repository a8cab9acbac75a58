//! A set of tasks owned by one test server, aborted together when it stops.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::task::JoinSet;

/// Every task of a server (accept loop, connections, HTTP/2 streams,
/// upgraded WebSockets) lives here, so stopping the server leaves nothing
/// running. Also serves as hyper's executor for HTTP/2 streams.
#[derive(Clone, Default)]
pub(crate) struct Tasks(Arc<Mutex<Inner>>);

#[derive(Default)]
struct Inner {
    set: JoinSet<()>,
    closed: bool,
}

impl Tasks {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Spawns `fut` unless the set was closed (then `fut` is dropped).
    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut inner = self.lock();
        if inner.closed {
            return;
        }
        // Reap finished tasks so a long-lived server does not accumulate them.
        while inner.set.try_join_next().is_some() {}
        inner.set.spawn(fut);
    }

    /// Aborts every task; later spawns are refused.
    pub(crate) fn close(&self) {
        let mut inner = self.lock();
        inner.closed = true;
        inner.set.abort_all();
    }

    /// Closes the set and waits until every task has stopped.
    pub(crate) async fn shutdown(&self) {
        let mut set = {
            let mut inner = self.lock();
            inner.closed = true;
            std::mem::take(&mut inner.set)
        };
        set.shutdown().await;
    }
}

impl<F> hyper::rt::Executor<F> for Tasks
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.spawn(async move {
            let _ = fut.await;
        });
    }
}
