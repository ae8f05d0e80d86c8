//! The start-up check: every stored entry against its own leaf, so that a
//! query can never disagree with the signed log.

use super::*;

/// Entries read per page by the start-up check.
pub(super) const CHECK_PAGE: u32 = 5000;

/// Reads every stored entry, in pages, and rebuilds the tree from the
/// stored leaf hashes. Each entry's leaf must hash to its leaf hash, parse
/// as a record, and reproduce every index column of its row; the first one
/// that does not is returned as the reason the log cannot be vouched for.
/// Entries out of order, or a leaf hash that is not 32 bytes, stop the
/// start.
pub(super) async fn check_entries(store: &Store) -> Result<(LeafTree, Option<String>), LogError> {
    let mut tree = LeafTree::default();
    let mut untrusted = None;
    loop {
        let rows = store.scan(tree.size(), CHECK_PAGE).await?;
        if rows.is_empty() {
            return Ok((tree, untrusted));
        }
        for row in rows {
            let expected = tree.size();
            if row.index != expected {
                return Err(LogError::Corrupt(format!(
                    "entries are not contiguous: index {} where {expected} was expected",
                    row.index
                )));
            }
            let hash = Hash::try_from(row.leaf_hash.as_slice()).map_err(|_| {
                LogError::Corrupt(format!("leaf hash of entry {} is not 32 bytes", row.index))
            })?;
            if untrusted.is_none()
                && let Err(why) = check_entry(&row.columns, &hash)
            {
                untrusted = Some(format!("entry {}: {why}", row.index));
            }
            tree.push(hash);
        }
    }
}

/// Whether one stored row agrees with its own leaf.
pub(super) fn check_entry(columns: &crate::store::IndexColumns, hash: &Hash) -> Result<(), String> {
    if leaf_hash(columns.leaf.as_bytes()) != *hash {
        return Err("its leaf text does not hash to its leaf hash".to_owned());
    }
    let (record, _) = EvidenceRecord::from_canonical_leaf(columns.leaf.as_bytes())
        .map_err(|e| format!("its leaf is not a readable record ({e})"))?;
    let derived = crate::store::IndexColumns::of(&record, columns.leaf.clone());
    match derived.first_difference(columns) {
        Some(column) => Err(format!("its {column} column differs from its leaf")),
        None => Ok(()),
    }
}
