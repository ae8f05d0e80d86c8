//! `steward audit verify` and `steward audit export`.
//!
//! `verify` trusts nothing the server says about itself: the verifier key
//! comes from a local file, every leaf is recomputed from the record fields,
//! the tree is rebuilt from those leaves, and the log must be consistent with
//! the checkpoint this machine trusted last time (saved locally).
//!
//! Exit codes: 0 verified; 3 the log failed verification (tampering,
//! truncation or a fork); 1 anything else (unreachable, bad arguments).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use steward_evidence::merkle::{MerkleTree, verify_consistency, verify_inclusion};
use steward_evidence::wire::record_from_proto;
use steward_evidence::{Checkpoint, Hash, NoteVerifier, leaf_hash};
use steward_proto::steward::audit::v1 as pb;
use steward_proto::steward::audit::v1::audit_service_client::AuditServiceClient;
use steward_telemetry::TracedChannel;

use crate::Output;
use crate::client::ConnectionArgs;

/// The exit code for a log that failed verification.
pub const EXIT_TAMPERED: u8 = 3;

const PAGE: u32 = 1000;

async fn client(conn: &ConnectionArgs) -> anyhow::Result<AuditServiceClient<TracedChannel>> {
    Ok(AuditServiceClient::new(conn.channel("audit").await?)
        .max_decoding_message_size(64 * 1024 * 1024))
}

/// Fetches entries `[from, to)`, calling `each` on every one in order.
async fn for_each_entry(
    client: &mut AuditServiceClient<TracedChannel>,
    from: u64,
    to: u64,
    mut each: impl FnMut(pb::LogEntry) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if from >= to {
        // Nothing to fetch (and end_index 0 would mean "the current size").
        return Ok(());
    }
    let mut token = String::new();
    let mut done = from;
    loop {
        let page = client
            .get_entries(pb::GetEntriesRequest {
                start_index: from,
                end_index: to,
                page_size: PAGE,
                page_token: token,
            })
            .await
            .context("cannot fetch entries")?
            .into_inner();
        for entry in page.entries {
            done = entry.index + 1;
            each(entry)?;
        }
        progress(done - from, to - from);
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprint!("\r\x1b[K");
    }
    Ok(())
}

/// A progress line on a terminal; nothing in a pipe or a log.
fn progress(done: u64, total: u64) {
    if total > 0 && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprint!(
            "\r  {done}/{total} entries ({:.0}%)",
            done as f64 * 100.0 / total as f64
        );
        let _ = std::io::stderr().flush();
    }
}

/// A verification failure: printed, and exit code 3.
struct Failure(String);

/// The log's verifier key, from a file the operator trusts.
fn load_verifier(path: &Path) -> anyhow::Result<NoteVerifier> {
    let vkey = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the log's verifier key {} (pass --vkey)",
            path.display()
        )
    })?;
    NoteVerifier::parse(&vkey).context("invalid verifier key")
}

/// A fresh checkpoint with its signature checked: the signed note and
/// what it says.
async fn signed_checkpoint(
    client: &mut AuditServiceClient<TracedChannel>,
    verifier: &NoteVerifier,
) -> anyhow::Result<Result<(String, Checkpoint), Failure>> {
    let note = client
        .get_checkpoint(pb::GetCheckpointRequest { fresh: true })
        .await?
        .into_inner()
        .signed_note;
    let checkpoint = match verifier.verify(&note).map(Checkpoint::parse) {
        Ok(Ok(checkpoint)) => checkpoint,
        Ok(Err(e)) => {
            return Ok(Err(Failure(format!(
                "the signed checkpoint is malformed: {e}"
            ))));
        }
        Err(e) => {
            return Ok(Err(Failure(format!(
                "the checkpoint is not signed by {}: {e}",
                verifier.name()
            ))));
        }
    };
    Ok(Ok((note, checkpoint)))
}

pub async fn verify(
    conn: &ConnectionArgs,
    vkey_path: &Path,
    state_path: &Path,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let verifier = load_verifier(vkey_path)?;
    let mut client = client(conn).await?;

    let verified = match run_verify(&mut client, &verifier, state_path).await {
        // Audit itself reports its log damaged (an entry it cannot read, or
        // its start-up integrity check failed): that is a failed verification.
        Err(e)
            if e.downcast_ref::<tonic::Status>()
                .is_some_and(|s| s.code() == tonic::Code::DataLoss) =>
        {
            let message = e
                .downcast_ref::<tonic::Status>()
                .map(|s| s.message().to_owned())
                .unwrap_or_default();
            Err(Failure(format!("audit reports its log damaged: {message}")))
        }
        other => other?,
    };
    match verified {
        Ok(report) => {
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({ "verified": true, "tree_size": report.size, "root_hash": hex(&report.root), "trusted_before": report.trusted_before })
                ),
                Output::Table => {
                    println!("verified {} entries of {}", report.size, verifier.name());
                    println!("  root hash      {}", hex(&report.root));
                    match report.trusted_before {
                        Some(size) => println!(
                            "  consistent with the checkpoint trusted before (size {size})"
                        ),
                        None => println!("  first run: checkpoint saved as trusted"),
                    }
                    println!("  trusted state  {}", state_path.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(Failure(reason)) => {
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({ "verified": false, "reason": reason })
                ),
                Output::Table => println!("VERIFICATION FAILED: {reason}"),
            }
            Ok(ExitCode::from(EXIT_TAMPERED))
        }
    }
}

struct Report {
    size: u64,
    root: Hash,
    trusted_before: Option<u64>,
}

async fn run_verify(
    client: &mut AuditServiceClient<TracedChannel>,
    verifier: &NoteVerifier,
    state_path: &Path,
) -> anyhow::Result<Result<Report, Failure>> {
    let (signed_note, checkpoint) = match signed_checkpoint(client, verifier).await? {
        Ok(signed) => signed,
        Err(failure) => return Ok(Err(failure)),
    };
    let size = checkpoint.tree_size;
    let tree = match recomputed_tree(client, size).await? {
        Ok(tree) => tree,
        Err(failure) => return Ok(Err(failure)),
    };
    let root = tree.root(size)?;
    if root != checkpoint.root_hash {
        return Ok(Err(first_leaf_not_signed(
            client,
            &tree,
            size,
            &checkpoint.root_hash,
        )
        .await?));
    }
    let trusted_before =
        match trusted_before(client, verifier, state_path, &tree, &checkpoint).await? {
            Ok(trusted) => trusted,
            Err(failure) => return Ok(Err(failure)),
        };
    if let Some(parent) = state_path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(state_path, &signed_note).with_context(|| {
        format!(
            "cannot save the trusted checkpoint to {}",
            state_path.display()
        )
    })?;
    Ok(Ok(Report {
        size,
        root,
        trusted_before,
    }))
}

/// The tree of the first `size` entries, each leaf recomputed from the
/// record fields the API returns; the first entry that does not reproduce
/// its leaf hash is the failure.
async fn recomputed_tree(
    client: &mut AuditServiceClient<TracedChannel>,
    size: u64,
) -> anyhow::Result<Result<MerkleTree, Failure>> {
    let mut tree = MerkleTree::new();
    let mut first_bad: Option<String> = None;
    for_each_entry(client, 0, size, |entry| {
        let index = entry.index;
        if index != tree.size() {
            bail!("the server returned entry {index} where {} was expected", tree.size());
        }
        let record = entry.record.clone().context("entry without a record")?;
        let recomputed = match record_from_proto(record) {
            Ok(record) => leaf_hash(&record.canonical_leaf(&entry.appended_by)),
            Err(e) => {
                first_bad.get_or_insert(format!("entry {index} is not a valid record: {e}"));
                [0u8; 32]
            }
        };
        if first_bad.is_none() && recomputed.as_slice() != entry.leaf_hash.as_slice() {
            first_bad = Some(format!(
                "entry {index} does not match its leaf hash: its fields hash to {} but the log holds {}",
                hex(&recomputed),
                hex(&entry.leaf_hash)
            ));
        }
        tree.push(recomputed);
        Ok(())
    })
    .await?;
    Ok(match first_bad {
        Some(reason) => Err(Failure(format!("first bad index: {reason}"))),
        None => Ok(tree),
    })
}

/// The leaves agree with the log's own hashes, yet not with the signed
/// root: the first leaf the signed tree does not contain.
async fn first_leaf_not_signed(
    client: &mut AuditServiceClient<TracedChannel>,
    tree: &MerkleTree,
    size: u64,
    signed_root: &Hash,
) -> anyhow::Result<Failure> {
    for index in 0..size {
        let proof = client
            .get_inclusion_proof(pb::GetInclusionProofRequest {
                leaf: Some(pb::get_inclusion_proof_request::Leaf::Index(index)),
                tree_size: size,
            })
            .await?
            .into_inner();
        let leaf = tree.leaf(index).unwrap_or([0; 32]);
        if !verify_inclusion(index, size, &leaf, &hashes_of(&proof.hashes), signed_root) {
            return Ok(Failure(format!(
                "first bad index: entry {index} is not in the signed tree"
            )));
        }
    }
    Ok(Failure(
        "the entries do not reproduce the signed root hash".into(),
    ))
}

/// Proof hashes as 32-byte values (a wrong length is left out, and the
/// proof then fails).
fn hashes_of(hashes: &[Vec<u8>]) -> Vec<Hash> {
    hashes
        .iter()
        .filter_map(|h| h.as_slice().try_into().ok())
        .collect()
}

/// The size of the checkpoint this machine trusted before, once the log is
/// proven consistent with it (`None`: none was saved).
async fn trusted_before(
    client: &mut AuditServiceClient<TracedChannel>,
    verifier: &NoteVerifier,
    state_path: &Path,
    tree: &MerkleTree,
    checkpoint: &Checkpoint,
) -> anyhow::Result<Result<Option<u64>, Failure>> {
    let size = checkpoint.tree_size;
    let note = match std::fs::read_to_string(state_path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ok(None)),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", state_path.display())),
        Ok(note) => note,
    };
    let text = verifier
        .verify(&note)
        .context("the saved trusted checkpoint does not verify")?;
    let trusted = Checkpoint::parse(text)?;
    if trusted.tree_size > size {
        return Ok(Err(Failure(format!(
            "the log shrank: {size} entries now, {} in the checkpoint trusted before (truncated or forked)",
            trusted.tree_size
        ))));
    }
    // Every tree extends the empty tree: nothing to prove from size 0.
    let consistent = if trusted.tree_size == 0 {
        true
    } else {
        let proof = client
            .get_consistency_proof(pb::GetConsistencyProofRequest {
                first_size: trusted.tree_size,
                second_size: size,
            })
            .await?
            .into_inner();
        verify_consistency(
            trusted.tree_size,
            size,
            &trusted.root_hash,
            &checkpoint.root_hash,
            &hashes_of(&proof.hashes),
        ) && tree.root(trusted.tree_size)? == trusted.root_hash
    };
    if !consistent {
        return Ok(Err(Failure(format!(
            "the log is not consistent with the checkpoint trusted before (size {}): history was rewritten",
            trusted.tree_size
        ))));
    }
    Ok(Ok(Some(trusted.tree_size)))
}

/// Writes entries `[from, to)` as JSON Lines: one object per entry with its
/// index, leaf hash (hex) and the canonical leaf itself.
pub async fn export(
    conn: &ConnectionArgs,
    from: u64,
    to: Option<u64>,
    out: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let mut client = client(conn).await?;
    let size = client
        .get_checkpoint(pb::GetCheckpointRequest { fresh: true })
        .await?
        .into_inner()
        .tree_size;
    let to = to.unwrap_or(size).min(size);
    let mut sink: Box<dyn Write> = match &out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut written = 0u64;
    for_each_entry(&mut client, from.min(to), to, |entry| {
        let record = entry.record.clone().context("entry without a record")?;
        let record = record_from_proto(record).map_err(|e| anyhow::anyhow!("entry {}: {e}", entry.index))?;
        let leaf: serde_json::Value = serde_json::from_slice(&record.canonical_leaf(&entry.appended_by))?;
        let line = serde_json::json!({ "index": entry.index, "leaf_hash": hex(&entry.leaf_hash), "entry": leaf });
        serde_json::to_writer(&mut sink, &line)?;
        sink.write_all(b"\n")?;
        written += 1;
        Ok(())
    })
    .await?;
    sink.flush()?;
    eprintln!("exported {written} entries");
    Ok(ExitCode::SUCCESS)
}

/// The trace id of the request that produced `record`, for a person to
/// look up in the tracing backend; `-` when tracing was off.
fn trace_of(record: &steward_evidence::EvidenceRecord) -> &str {
    record.trace.as_ref().map_or("-", |t| t.trace_id.as_str())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What `follow` streams, and when it stops.
#[derive(Debug, Clone, clap::Args)]
pub struct FollowArgs {
    /// First index (0: the whole log, then what is appended).
    #[arg(long, default_value_t = 0)]
    pub from: u64,
    /// Only records of this chain of evidence.
    #[arg(long)]
    pub correlation_id: Option<String>,
    /// Only records of this incident.
    #[arg(long)]
    pub incident: Option<String>,
    /// Only records about this inventory identity.
    #[arg(long)]
    pub identity: Option<String>,
    /// Only records of this action (`credential.rotate`, …).
    #[arg(long)]
    pub action: Option<String>,
    /// Stop after this many records.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop once nothing new has arrived for this long.
    #[arg(long)]
    pub idle_seconds: Option<u64>,
}

/// Streams the log (`Subscribe`) as it grows: a line per record, or with
/// `--output json` one `{index, leaf_hash, entry}` object per line, as
/// `export` writes them.
pub async fn follow(
    conn: &ConnectionArgs,
    args: FollowArgs,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let mut stream = client(conn)
        .await?
        .subscribe(pb::SubscribeRequest {
            from_index: args.from,
            filter: Some(pb::EntryFilter {
                incident_ref: args.incident.unwrap_or_default(),
                nhi_id: args.identity.unwrap_or_default(),
                actor: String::new(),
                action: args.action.unwrap_or_default(),
                correlation_id: args.correlation_id.unwrap_or_default(),
            }),
        })
        .await?
        .into_inner();
    if output == Output::Table {
        println!(
            "{:>7}  {:<20}  {:<30} {:<18} {:<12}  {:<32}  ACTOR",
            "INDEX", "TIME", "ACTION", "SERVICE", "INCIDENT", "TRACE"
        );
    }
    let idle = args.idle_seconds.map(std::time::Duration::from_secs);
    let mut shown = 0u64;
    while args.count.is_none_or(|n| shown < n) {
        let next = match idle {
            Some(idle) => match tokio::time::timeout(idle, stream.message()).await {
                Ok(next) => next?,
                Err(_) => break,
            },
            None => stream.message().await?,
        };
        let Some(page) = next else {
            bail!("audit ended the stream; resume with --from <next index>");
        };
        if let Some(behind) = page.fell_behind {
            bail!(
                "fell behind the log; resume with --from {}",
                behind.resume_from
            );
        }
        for entry in page.entries {
            if args.count.is_some_and(|n| shown >= n) {
                break;
            }
            let record = entry.record.clone().context("entry without a record")?;
            let record = record_from_proto(record)
                .map_err(|e| anyhow::anyhow!("entry {}: {e}", entry.index))?;
            match output {
                Output::Json => {
                    let leaf: serde_json::Value =
                        serde_json::from_slice(&record.canonical_leaf(&entry.appended_by))?;
                    let line = serde_json::json!({ "index": entry.index, "leaf_hash": hex(&entry.leaf_hash), "entry": leaf });
                    println!("{line}");
                }
                Output::Table => {
                    let actor = if record.actor.human_subject.is_empty() {
                        record.actor.workload_spiffe_id.clone()
                    } else {
                        format!(
                            "{} via {}",
                            record.actor.human_subject, record.actor.workload_spiffe_id
                        )
                    };
                    let time = record
                        .time
                        .replace_nanosecond(0)
                        .ok()
                        .and_then(|t| {
                            t.format(&time::format_description::well_known::Rfc3339)
                                .ok()
                        })
                        .unwrap_or_default();
                    println!(
                        "{:>7}  {:<20}  {:<30} {:<18} {:<12}  {:<32}  {}",
                        entry.index,
                        time,
                        record.action,
                        record.emitting_service,
                        record.incident_ref,
                        trace_of(&record),
                        actor
                    );
                }
            }
            shown += 1;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Proves that one record is in the log: fetches a checkpoint and checks
/// its signature with `vkey`, fetches the record's audit path for that
/// checkpoint's tree, recomputes the leaf from the record's fields and
/// the root from the path. Exit 3 when any of it fails.
pub async fn proof(
    conn: &ConnectionArgs,
    vkey_path: &Path,
    leaf: &str,
    output: Output,
) -> anyhow::Result<ExitCode> {
    let verifier = load_verifier(vkey_path)?;
    let wanted = if leaf.len() == 64 && leaf.bytes().all(|b| b.is_ascii_hexdigit()) {
        pb::get_inclusion_proof_request::Leaf::LeafHash(
            (0..32)
                .map(|i| u8::from_str_radix(&leaf[2 * i..2 * i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()?,
        )
    } else {
        pb::get_inclusion_proof_request::Leaf::Index(leaf.parse().map_err(|_| {
            tonic::Status::invalid_argument(
                "leaf: a leaf hash (64 hex digits) or an index is required",
            )
        })?)
    };
    let mut client = client(conn).await?;
    let failed = |reason: String| -> anyhow::Result<ExitCode> {
        match output {
            Output::Json => println!(
                "{}",
                serde_json::json!({ "verified": false, "reason": reason })
            ),
            Output::Table => println!("PROOF FAILED: {reason}"),
        }
        Ok(ExitCode::from(EXIT_TAMPERED))
    };
    let checkpoint = match signed_checkpoint(&mut client, &verifier).await? {
        Ok((_, checkpoint)) => checkpoint,
        Err(Failure(reason)) => return failed(reason),
    };
    let proof = client
        .get_inclusion_proof(pb::GetInclusionProofRequest {
            leaf: Some(wanted),
            tree_size: checkpoint.tree_size,
        })
        .await?
        .into_inner();
    let entry = client
        .get_entries(pb::GetEntriesRequest {
            start_index: proof.index,
            end_index: proof.index + 1,
            page_size: 1,
            page_token: String::new(),
        })
        .await?
        .into_inner()
        .entries
        .into_iter()
        .next()
        .context("audit did not return the entry it proved")?;
    let record = record_from_proto(entry.record.clone().context("entry without a record")?)
        .map_err(|e| anyhow::anyhow!("entry {}: {e}", entry.index))?;
    let recomputed = leaf_hash(&record.canonical_leaf(&entry.appended_by));
    if recomputed.as_slice() != proof.leaf_hash.as_slice() {
        return failed(format!(
            "entry {}'s fields hash to {}, not to the proved leaf {}",
            entry.index,
            hex(&recomputed),
            hex(&proof.leaf_hash)
        ));
    }
    let path: Vec<Hash> = match proof
        .hashes
        .iter()
        .map(|h| Hash::try_from(h.as_slice()))
        .collect()
    {
        Ok(path) => path,
        Err(_) => return failed("the audit path holds a hash that is not 32 bytes".into()),
    };
    if !verify_inclusion(
        proof.index,
        checkpoint.tree_size,
        &recomputed,
        &path,
        &checkpoint.root_hash,
    ) {
        return failed(format!(
            "entry {} is not in the signed tree of size {}",
            proof.index, checkpoint.tree_size
        ));
    }
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "verified": true,
                "index": proof.index,
                "leaf_hash": hex(&recomputed),
                "action": record.action,
                "trace_id": record.trace.as_ref().map(|t| &t.trace_id),
                "tree_size": checkpoint.tree_size,
                "root_hash": hex(&checkpoint.root_hash),
                "audit_path": path.iter().map(|h| hex(h)).collect::<Vec<_>>(),
            })
        ),
        Output::Table => {
            println!(
                "entry {} ({}) is in the tree of {} signed by {}",
                proof.index,
                record.action,
                checkpoint.tree_size,
                verifier.name()
            );
            println!("  leaf hash  {}", hex(&recomputed));
            println!("  root hash  {}", hex(&checkpoint.root_hash));
            println!("  trace      {}", trace_of(&record));
            println!("  path       {} hashes", path.len());
        }
    }
    Ok(ExitCode::SUCCESS)
}
