//! Work one replica at a time does for its database
//! ([`ServiceContext::spawn_singleton`]): the role is a PostgreSQL
//! advisory lock ([`steward_db::role`]); the holder runs the work, the
//! others contend every [`CONTEND`], and one of them takes over within a
//! few seconds of the holder dying. On SQLite the work just runs.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use steward_db::Database;
use steward_db::role::HeldRole;

use crate::app::ServiceContext;

/// How often a replica without a role tries to take it.
pub const CONTEND: Duration = Duration::from_secs(1);
/// How often the holder checks that its lock's session is still there.
const CHECK: Duration = Duration::from_secs(1);

/// Resolves when a singleton's work must stop: the service is stopping or
/// the role was lost.
pub type Stop = Pin<Box<dyn Future<Output = ()> + Send>>;

impl ServiceContext {
    /// Runs `work` while this replica holds role `name`: started each time
    /// the role is taken, with a [`Stop`] that resolves when the role is
    /// lost or the service stops. Work that is told to stop must return;
    /// anything it had not committed is for the next holder to do again,
    /// so singleton work is written to be safe to repeat.
    pub fn spawn_singleton<W, F>(&self, name: &'static str, work: W)
    where
        W: Fn(Stop) -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let Database::Postgres(pool) = &self.database else {
            metrics::gauge!("steward_role_held", "role" => name).set(1.0);
            self.spawn(work(Box::pin(self.shutdown())));
            return;
        };
        let pool = pool.clone();
        let context = self.clone();
        self.spawn(async move {
            let mut announced = false;
            loop {
                match HeldRole::try_take(&pool, name).await {
                    Ok(Some(held)) => {
                        tracing::info!(role = name, "holding the role");
                        announced = false;
                        if hold(&context, name, held, &work).await {
                            return;
                        }
                    }
                    Ok(None) if !announced => {
                        tracing::info!(role = name, "another replica holds the role");
                        announced = true;
                    }
                    Ok(None) => {}
                    Err(error) => {
                        tracing::warn!(role = name, %error, "cannot contend for the role")
                    }
                }
                tokio::select! {
                    () = context.shutdown() => return,
                    () = tokio::time::sleep(CONTEND) => {}
                }
            }
        });
    }
}

/// Runs the work while `held` lasts; true when the service is stopping.
async fn hold<W, F>(
    context: &ServiceContext,
    name: &'static str,
    mut held: HeldRole,
    work: &W,
) -> bool
where
    W: Fn(Stop) -> F,
    F: Future<Output = ()>,
{
    metrics::gauge!("steward_role_held", "role" => name).set(1.0);
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = context.shutdown();
    let stop: Stop = Box::pin(async move {
        tokio::select! {
            () = shutdown => {}
            _ = lost_rx => {}
        }
    });
    let running = work(stop);
    tokio::pin!(running);
    let mut check = tokio::time::interval(CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lost_tx = Some(lost_tx);
    loop {
        tokio::select! {
            () = &mut running => break,
            _ = check.tick(), if lost_tx.is_some() => {
                if !held.alive().await {
                    tracing::error!(role = name, "lost the role's lock; stopping its work");
                    metrics::gauge!("steward_role_held", "role" => name).set(0.0);
                    if let Some(tx) = lost_tx.take() {
                        let _ = tx.send(());
                    }
                }
            }
        }
    }
    metrics::gauge!("steward_role_held", "role" => name).set(0.0);
    let stopping = context.is_stopping();
    held.release().await;
    stopping
}
