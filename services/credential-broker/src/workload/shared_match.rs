//! One inventory lookup for callers that attest alike at the same time.
//!
//! Sidecars on one node often run as one user (every Envoy of a mesh as
//! the same uid), and a node's restart connects them all at once. Each
//! would ask inventory the same `MatchSelectors` question; here the first
//! asks and the others that arrive while it waits take its answer. A
//! caller that joins a flight gets an answer read at most one lookup (a
//! few milliseconds) before it arrived: an entry deleted in that window
//! can still match it once. Nothing is kept past the flight: once the
//! answer lands, the next caller asks again. (A matched entry is not yet
//! a credential: authority still decides each issuance on the identity's
//! current state.)

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OnceCell;
use tonic::Status;

type Answer<T> = Result<T, Status>;
/// One lookup: the first caller sets the answer, the others wait for it.
type Flight<T> = Arc<OnceCell<Answer<T>>>;

/// Lookups in flight, keyed by the caller's selectors in a stable order.
pub(super) struct Flights<T> {
    flying: Mutex<HashMap<Vec<String>, Flight<T>>>,
}

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Self {
            flying: Mutex::new(HashMap::new()),
        }
    }
}

impl<T: Clone> Flights<T> {
    /// The answer for `key`: from the lookup in flight for it, or from
    /// `lookup`, which then flies for every caller that comes meanwhile.
    /// A caller that gives up (its client left) leaves the flight to the
    /// next waiter, which runs `lookup` itself.
    pub(super) async fn answer<F>(&self, mut key: Vec<String>, lookup: F) -> Answer<T>
    where
        F: Future<Output = Answer<T>>,
    {
        key.sort_unstable();
        let flight = self
            .flying
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(key.clone())
            .or_default()
            .clone();
        let answer = flight.get_or_init(|| lookup).await.clone();
        let mut flying = self.flying.lock().unwrap_or_else(PoisonError::into_inner);
        if flying.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
            flying.remove(&key);
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn callers_that_come_together_share_one_lookup_and_later_ones_ask_again() {
        let flights = Arc::new(Flights::<usize>::default());
        let asked = Arc::new(AtomicUsize::new(0));
        let lookup = |asked: Arc<AtomicUsize>| async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Ok(asked.fetch_add(1, Ordering::SeqCst))
        };
        let mut together = tokio::task::JoinSet::new();
        for n in 0..10 {
            let (flights, asked) = (flights.clone(), asked.clone());
            let mut key = vec!["uid:1".to_owned(), "gid:2".to_owned()];
            if n % 2 == 0 {
                key.reverse();
            }
            together.spawn(async move { flights.answer(key, lookup(asked)).await });
        }
        while let Some(answer) = together.join_next().await {
            assert_eq!(answer.unwrap().unwrap(), 0);
        }
        assert_eq!(asked.load(Ordering::SeqCst), 1);
        // Another set of selectors is another question.
        let other = flights.answer(vec!["uid:3".into()], lookup(asked.clone()));
        assert_eq!(other.await.unwrap(), 1);
        // Nothing outlives its flight.
        let again = flights.answer(vec!["uid:1".into(), "gid:2".into()], lookup(asked.clone()));
        assert_eq!(again.await.unwrap(), 2);
        assert!(flights.flying.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_failed_lookup_is_the_answer_of_its_flight_only() {
        let flights = Flights::<usize>::default();
        let failed = flights
            .answer(vec!["uid:1".into()], async {
                Err(Status::unavailable("down"))
            })
            .await;
        assert_eq!(failed.unwrap_err().code(), tonic::Code::Unavailable);
        let next = flights.answer(vec!["uid:1".into()], async { Ok(7) }).await;
        assert_eq!(next.unwrap(), 7);
    }
}
