//! The Merkle tree of RFC 6962 / RFC 9162: leaf hash `SHA-256(0x00 ‖ leaf)`,
//! node hash `SHA-256(0x01 ‖ left ‖ right)`, inclusion and consistency proofs,
//! and their verification algorithms (RFC 9162 §2.1.3.2 and §2.1.4.2).
//!
//! [`MerkleTree`] keeps every complete, aligned subtree hash in memory
//! (about 64 bytes per leaf), so any tree head or proof for any size up to the
//! current one needs O(log² n) hash operations at most.

use sha2::{Digest, Sha256};

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// `SHA-256(0x00 ‖ leaf)`.
pub fn leaf_hash(leaf: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(leaf);
    h.finalize().into()
}

/// `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The hash of the empty tree, `SHA-256()`.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Why a proof cannot be produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("tree size {requested} is beyond the tree ({size} leaves)")]
    SizeBeyondTree { requested: u64, size: u64 },
    #[error("leaf index {index} is not below tree size {tree_size}")]
    IndexOutOfRange { index: u64, tree_size: u64 },
    #[error("first size {first} is larger than second size {second}")]
    ReversedSizes { first: u64, second: u64 },
    #[error("a consistency proof needs a first size of at least 1")]
    EmptyFirstTree,
}

/// An append-only Merkle tree held in memory.
#[derive(Debug, Clone, Default)]
pub struct MerkleTree {
    /// `levels[l][i]` is the hash of leaves `[i·2^l, (i+1)·2^l)`.
    levels: Vec<Vec<Hash>>,
}

impl MerkleTree {
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        self.levels[0].push(leaf);
        let mut level = 0;
        loop {
            let len = self.levels[level].len();
            if len % 2 == 1 {
                break;
            }
            let parent = node_hash(&self.levels[level][len - 2], &self.levels[level][len - 1]);
            if self.levels.len() == level + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[level + 1].push(parent);
            level += 1;
        }
    }

    /// The leaf hash at `index`, if present.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.levels
            .first()?
            .get(usize::try_from(index).ok()?)
            .copied()
    }

    /// The root of the tree's first `size` leaves (the tree head at `size`).
    pub fn root(&self, size: u64) -> Result<Hash, ProofError> {
        self.check_size(size)?;
        Ok(if size == 0 {
            empty_root()
        } else {
            self.subtree(0, size)
        })
    }

    /// The audit path for leaf `index` in the tree of `tree_size` leaves.
    pub fn inclusion_proof(&self, index: u64, tree_size: u64) -> Result<Vec<Hash>, ProofError> {
        self.check_size(tree_size)?;
        if index >= tree_size {
            return Err(ProofError::IndexOutOfRange { index, tree_size });
        }
        let mut proof = Vec::new();
        self.path(index, 0, tree_size, &mut proof);
        Ok(proof)
    }

    /// The consistency proof between the trees of `first` and `second` leaves.
    pub fn consistency_proof(&self, first: u64, second: u64) -> Result<Vec<Hash>, ProofError> {
        self.check_size(second)?;
        if first > second {
            return Err(ProofError::ReversedSizes { first, second });
        }
        if first == 0 {
            return Err(ProofError::EmptyFirstTree);
        }
        let mut proof = Vec::new();
        if first < second {
            self.subproof(first, 0, second, true, &mut proof);
        }
        Ok(proof)
    }

    fn check_size(&self, requested: u64) -> Result<(), ProofError> {
        if requested > self.size() {
            return Err(ProofError::SizeBeyondTree {
                requested,
                size: self.size(),
            });
        }
        Ok(())
    }

    /// MTH of leaves `[start, end)`, `end > start`, with `start` aligned to
    /// the largest power of two not above `end - start` (always true for the
    /// ranges RFC 9162's recursions visit).
    fn subtree(&self, start: u64, end: u64) -> Hash {
        let n = end - start;
        if n.is_power_of_two() {
            let level = n.trailing_zeros() as usize;
            return self.levels[level][(start >> level) as usize];
        }
        let k = largest_power_of_two_below(n);
        node_hash(
            &self.subtree(start, start + k),
            &self.subtree(start + k, end),
        )
    }

    /// RFC 9162 PATH(m, D[start:end]), deepest hash first.
    fn path(&self, m: u64, start: u64, end: u64, out: &mut Vec<Hash>) {
        let n = end - start;
        if n == 1 {
            return;
        }
        let k = largest_power_of_two_below(n);
        if m < k {
            self.path(m, start, start + k, out);
            out.push(self.subtree(start + k, end));
        } else {
            self.path(m - k, start + k, end, out);
            out.push(self.subtree(start, start + k));
        }
    }

    /// RFC 9162 SUBPROOF(m, D[start:end], b).
    fn subproof(&self, m: u64, start: u64, end: u64, whole: bool, out: &mut Vec<Hash>) {
        let n = end - start;
        if m == n {
            if !whole {
                out.push(self.subtree(start, end));
            }
            return;
        }
        let k = largest_power_of_two_below(n);
        if m <= k {
            self.subproof(m, start, start + k, whole, out);
            out.push(self.subtree(start + k, end));
        } else {
            self.subproof(m - k, start + k, end, false, out);
            out.push(self.subtree(start, start + k));
        }
    }
}

/// The largest power of two strictly below `n` (`n ≥ 2`).
fn largest_power_of_two_below(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// The root of a tree with these leaf hashes, computed from scratch.
pub fn root_of(leaves: &[Hash]) -> Hash {
    let mut tree = MerkleTree::new();
    for leaf in leaves {
        tree.push(*leaf);
    }
    tree.root(tree.size()).unwrap_or_else(|_| empty_root())
}

/// RFC 9162 §2.1.3.2: whether `proof` shows `leaf` at `index` in the tree
/// of `tree_size` leaves with root `root`.
pub fn verify_inclusion(
    index: u64,
    tree_size: u64,
    leaf: &Hash,
    proof: &[Hash],
    root: &Hash,
) -> bool {
    if index >= tree_size {
        return false;
    }
    let (mut fnode, mut snode) = (index, tree_size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && r == *root
}

/// RFC 9162 §2.1.4.2: whether `proof` shows the tree of `first` leaves with
/// root `first_root` is a prefix of the tree of `second` leaves with root
/// `second_root`.
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> bool {
    if first == 0 || first > second {
        return false;
    }
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    if proof.is_empty() {
        return false;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let (mut fnode, mut snode) = (first - 1, second - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if snode == 0 {
            return false;
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    snode == 0 && fr == *first_root && sr == *second_root
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    /// RFC 9162's MTH, straight from its definition, as the reference.
    fn reference_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = largest_power_of_two_below(n as u64) as usize;
                node_hash(&reference_root(&leaves[..k]), &reference_root(&leaves[k..]))
            }
        }
    }

    fn tree(n: u64) -> MerkleTree {
        let mut t = MerkleTree::new();
        for l in leaves(n) {
            t.push(l);
        }
        t
    }

    #[test]
    fn known_answer_for_the_empty_tree_and_a_single_leaf() {
        // SHA-256 of the empty string.
        assert_eq!(
            empty_root(),
            [
                0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f,
                0xb9, 0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b,
                0x78, 0x52, 0xb8, 0x55
            ]
        );
        let t = tree(1);
        assert_eq!(t.root(1).unwrap(), leaf_hash(&0u64.to_be_bytes()));
    }

    #[test]
    fn sizes_beyond_the_tree_and_reversed_ranges_are_refused() {
        let t = tree(5);
        assert!(matches!(t.root(6), Err(ProofError::SizeBeyondTree { .. })));
        assert!(matches!(
            t.inclusion_proof(5, 5),
            Err(ProofError::IndexOutOfRange { .. })
        ));
        assert!(matches!(
            t.consistency_proof(4, 3),
            Err(ProofError::ReversedSizes { .. })
        ));
        assert!(matches!(
            t.consistency_proof(0, 3),
            Err(ProofError::EmptyFirstTree)
        ));
        assert!(t.consistency_proof(3, 3).unwrap().is_empty());
    }

    #[test]
    fn every_proof_in_small_trees_verifies_and_tampering_is_caught() {
        let all = leaves(40);
        let t = tree(40);
        for n in 1..=40u64 {
            let root = t.root(n).unwrap();
            assert_eq!(root, reference_root(&all[..n as usize]), "root at {n}");
            for m in 0..n {
                let proof = t.inclusion_proof(m, n).unwrap();
                assert!(
                    verify_inclusion(m, n, &all[m as usize], &proof, &root),
                    "inclusion {m} in {n}"
                );
                let wrong = leaf_hash(b"not in the tree");
                assert!(!verify_inclusion(m, n, &wrong, &proof, &root));
                if n > 1 {
                    assert!(
                        !verify_inclusion((m + 1) % n, n, &all[m as usize], &proof, &root)
                            || (m + 1) % n == m
                    );
                }
            }
            for m in 1..=n {
                let proof = t.consistency_proof(m, n).unwrap();
                let first = t.root(m).unwrap();
                assert!(
                    verify_consistency(m, n, &first, &root, &proof),
                    "consistency {m}->{n}"
                );
                if m < n {
                    let forged = leaf_hash(b"forged");
                    assert!(!verify_consistency(m, n, &forged, &root, &proof));
                    assert!(!verify_consistency(m, n, &first, &forged, &proof));
                }
            }
        }
    }

    proptest! {
        #[test]
        fn proofs_verify_at_any_size(n in 1u64..3000, seed in any::<u64>()) {
            let t = tree(n);
            let m = seed % n;
            let root = t.root(n).unwrap();
            let proof = t.inclusion_proof(m, n).unwrap();
            prop_assert!(verify_inclusion(m, n, &t.leaf(m).unwrap(), &proof, &root));
            let first = 1 + seed % n;
            let cproof = t.consistency_proof(first, n).unwrap();
            prop_assert!(verify_consistency(first, n, &t.root(first).unwrap(), &root, &cproof));
        }

        #[test]
        fn a_flipped_bit_in_a_proof_is_caught(n in 2u64..500, seed in any::<u64>(), bit in 0usize..256) {
            let t = tree(n);
            let m = seed % n;
            let root = t.root(n).unwrap();
            let mut proof = t.inclusion_proof(m, n).unwrap();
            let which = (seed as usize / 7) % proof.len();
            proof[which][bit / 8] ^= 1 << (bit % 8);
            prop_assert!(!verify_inclusion(m, n, &t.leaf(m).unwrap(), &proof, &root));
        }
    }
}
