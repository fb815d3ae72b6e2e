//! A switch the hot-path allocation counter (`testing::hot_path`) flips around every poll of
//! the tasks that serve a request: the connection's reader, writer and request tasks, and the
//! flusher. Counting only while these run leaves out glommio's run loop, whose allocations
//! per request vary with how many turns timing gives it, and keeps what ringmq's own code
//! allocates on the real connection path, which does not vary.
//!
//! Outside test builds [`observed`] returns its future unchanged: production pays nothing.

#[cfg(any(test, feature = "testing"))]
mod hook {
    use std::cell::Cell;
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    thread_local! {
        // `const`: reading it never allocates, so it cannot count itself.
        static SWITCH: Cell<Option<fn(bool)>> = const { Cell::new(None) };
    }

    /// Installs `switch` on this thread (`None` removes it): every poll of an [`Observed`]
    /// future calls `switch(true)` before and `switch(false)` after.
    pub fn set_switch(switch: Option<fn(bool)>) {
        SWITCH.with(|s| s.set(switch));
    }

    /// A future whose polls the installed switch brackets. Observed futures never nest (each
    /// is a task of its own), so switching off after a poll never cuts another one short.
    pub struct Observed<F> {
        inner: F,
    }

    impl<F: Future> Future for Observed<F> {
        type Output = F::Output;

        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
            // SAFETY: `inner` is never moved out of the pinned `Observed`; this is the
            // structural projection of its only field.
            let inner = unsafe { self.map_unchecked_mut(|o| &mut o.inner) };
            let switch = SWITCH.with(Cell::get);
            if let Some(switch) = switch {
                switch(true);
            }
            let polled = inner.poll(cx);
            if let Some(switch) = switch {
                switch(false);
            }
            polled
        }
    }

    /// `inner`, its polls bracketed by the switch when one is installed.
    pub fn observed<F: Future>(inner: F) -> Observed<F> {
        Observed { inner }
    }
}

#[cfg(any(test, feature = "testing"))]
pub use hook::{observed, set_switch, Observed};

/// `inner` unchanged: only test builds bracket polls.
#[cfg(not(any(test, feature = "testing")))]
#[inline(always)]
pub fn observed<F>(inner: F) -> F {
    inner
}
