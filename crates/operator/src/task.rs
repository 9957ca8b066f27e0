//! Spawned tasks tied to a value's lifetime: a lister, a watch, anything that must not outlive
//! the code that started it. Touches nothing else.

/// A spawned task that is aborted when this handle is dropped.
pub(crate) struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
