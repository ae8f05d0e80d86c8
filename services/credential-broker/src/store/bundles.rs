//! Federation's rows: foreign trust domains' bundles, each change
//! committed with its evidence, and the sequence numbers of this trust
//! domain's own bundle.

use steward_db::{Engine, on_backend};
use steward_evidence::EvidenceRecord;
use steward_outbox::OutboxTransaction;

use super::{Store, StoreError};

/// A foreign trust domain's bundle as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBundle {
    pub trust_domain: String,
    /// The SPIFFE bundle document, as fetched.
    pub document: String,
    pub sequence: i64,
    pub fetched_at_ns: i64,
}

impl Store {
    /// Every foreign bundle, by trust domain.
    pub async fn foreign_bundles(&self) -> Result<Vec<StoredBundle>, StoreError> {
        let rows: Vec<(String, String, i64, i64)> = on_backend!(self.database(), pool, Db => {
            sqlx::query_as::<Db, (String, String, i64, i64)>(
                "SELECT trust_domain, document, sequence, fetched_at_ns FROM federated_bundles ORDER BY trust_domain",
            )
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(
                |(trust_domain, document, sequence, fetched_at_ns)| StoredBundle {
                    trust_domain,
                    document,
                    sequence,
                    fetched_at_ns,
                },
            )
            .collect())
    }

    /// Stores `bundle` in place of the trust domain's last one, with the
    /// evidence of the change.
    pub async fn save_foreign_bundle(
        &self,
        bundle: &StoredBundle,
        evidence: &EvidenceRecord,
    ) -> Result<(), StoreError> {
        on_backend!(self.database(), pool, Db => {
            let mut tx = pool.begin_with(<Db as Engine>::BEGIN_WRITE).await?;
            sqlx::query::<Db>(
                "INSERT INTO federated_bundles (trust_domain, document, sequence, fetched_at_ns) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (trust_domain) DO UPDATE SET document = excluded.document, sequence = excluded.sequence, fetched_at_ns = excluded.fetched_at_ns",
            )
            .bind(&bundle.trust_domain)
            .bind(&bundle.document)
            .bind(bundle.sequence)
            .bind(bundle.fetched_at_ns)
            .execute(&mut *tx)
            .await?;
            tx.enqueue_all(std::slice::from_ref(evidence)).await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// The sequence number this trust domain's bundle of `digest` is
    /// published under: the last one while the bundle is unchanged, the
    /// next one once it changes. Replicas that race agree (the number is
    /// the table's key; the loser reads the winner's).
    pub async fn publication(&self, digest: &str, now_ns: i64) -> Result<u64, StoreError> {
        for _ in 0..3 {
            let last: Option<(i64, String)> = on_backend!(self.database(), pool, Db => {
                sqlx::query_as::<Db, (i64, String)>(
                    "SELECT sequence, digest FROM bundle_publications ORDER BY sequence DESC LIMIT 1",
                )
                .fetch_optional(pool)
                .await?
            });
            let next = match last {
                Some((sequence, published)) if published == digest => {
                    return u64::try_from(sequence)
                        .map_err(|_| super::corrupt("bundle sequence", sequence));
                }
                Some((sequence, _)) => sequence + 1,
                None => 1,
            };
            on_backend!(self.database(), pool, Db => {
                sqlx::query::<Db>(
                    "INSERT INTO bundle_publications (sequence, digest, published_at_ns) VALUES ($1, $2, $3) ON CONFLICT (sequence) DO NOTHING",
                )
                .bind(next)
                .bind(digest)
                .bind(now_ns)
                .execute(pool)
                .await?;
            });
        }
        Err(StoreError::unavailable(
            "the bundle's sequence number kept changing",
        ))
    }
}
