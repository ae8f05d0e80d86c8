#!/usr/bin/env bash
# `make demo`: the incident story against a running `steward dev up`
# (`make run` in another terminal), through the `steward` CLI alone, each
# actor with its own SVID from the dev PKI and each person with a dev
# OIDC token. It can run again: every run is a new signal, a new approval
# and a new rotation of the same identities.
#
#   1. import the sample inventory
#   2. a scanner reports billing-sync's GitHub token exposed; a response
#      rule watchlists and restricts it
#   3. the SOAR bot asks to rotate it for INC-42: approval required
#   4. the technical owner approves (the bot may not)
#   5. the broker rotates it and confirms the old token is rejected
#   6. on call breaks glass and suspends the connector's AWS key
#   7. INC-42 closes: its leases are revoked, the watch stream shows it
#   8. the auditor follows the chain of evidence and verifies the log
set -euo pipefail

DEV=${STEWARD_DEV_DIR:-.steward/dev}
PKI=$DEV/pki
STEWARD=${STEWARD:-./target/debug/steward}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$DEV/demo
mkdir -p "$WORK"
export STEWARD_BUNDLE=$PKI/bundle.pem STEWARD_DEV_DIR=$DEV

bold=$'\e[1m' dim=$'\e[2m' off=$'\e[0m'
[ -t 1 ] || { bold='' dim='' off=''; }

step() { printf '\n%s== %s%s\n' "$bold" "$*" "$off"; }
say() { printf '%s%s%s\n' "$dim" "$*" "$off"; }

# steward as one of the dev PKI's identities: operator, soar,
# secret-scanner, auditor.
as() {
    local who=$1
    shift
    # On standard error, so that a command's output can go to a file.
    say "\$ steward $*   (as $who)" >&2
    "$STEWARD" --cert "$PKI/$who.crt" --key "$PKI/$who.key" "$@"
}
# The same, quietly, for the values the script needs.
quiet() {
    local who=$1
    shift
    "$STEWARD" --cert "$PKI/$who.crt" --key "$PKI/$who.key" "$@"
}
# A person: the operator's SVID with that person's dev token.
person() {
    local who=$1
    shift
    as operator --token-file "$WORK/$who.token" "$@"
}
# A field of a JSON document on standard input: `json '["a"][0]["b"]'`.
json() { python3 -c 'import json, sys; v = json.load(sys.stdin); print(eval("v" + sys.argv[1]))' "$1"; }

for who in soar secret-scanner auditor; do
    if [ ! -f "$PKI/$who.crt" ]; then
        echo "the dev PKI has no SVID for $who yet: restart \`make run\` (it issues the demo's SVIDs)" >&2
        exit 1
    fi
done
if ! quiet operator health >/dev/null 2>&1; then
    echo "Steward is not running here: start it with \`make run\` in another terminal first." >&2
    exit 1
fi
for who in alice oncall sam; do
    quiet operator login --dev --as "$who" --token-file "$WORK/$who.token" >/dev/null
done

step "0. The site's policies and response rules"
cat "$(git -C "$HERE" rev-parse --show-toplevel)/services/authority/policy/default.cedar" \
    "$HERE/site.cedar" >"$WORK/policies.cedar"
as operator policy upload "$WORK/policies.cedar" --description "demo site" --activate --reason "the demo's incident response"
as operator rules upload "$HERE/rules.json" --description "contain exposed secrets" --activate --reason "the demo's incident response"

step "1. Import the sample inventory (AWS credential report, Kubernetes ServiceAccounts, generic CSV)"
samples=$(git -C "$HERE" rev-parse --show-toplevel)/deploy/samples
# Exit 2 means some rows were rejected and reported; the others applied.
as operator identity import "$samples/aws-iam-credential-report.csv" --format aws --environment production || [ $? -eq 2 ]
as operator identity import "$samples/kubernetes-serviceaccounts.json" --format k8s --environment production || [ $? -eq 2 ]
as operator identity import "$samples/identities.csv" --format csv || [ $? -eq 2 ]
token_id=$(quiet operator identity list --text "billing-sync GitHub" -o json | json '[0]["id"]')
aws_key=$(quiet operator identity list --text "billing-sync access key" -o json | json '[0]["id"]')
as operator identity show "$token_id"
# A run before this one left them restricted and suspended.
for id in "$token_id" "$aws_key"; do
    quiet operator identity transition "$id" --to active --reason "demo: start again" >/dev/null 2>&1 || true
done

say "billing-sync's current GitHub token is a broker lease, issued under change ticket CHG-7:"
as soar credential issue --identity "$token_id" --incident CHG-7 --window-minutes 60 --scope repo:write \
    --reason "the connector's token" -o json >"$WORK/old-token.json"
old_lease=$(json '["lease"]["lease_id"]' <"$WORK/old-token.json")
say "old lease $old_lease"

step "2. A scanner reports the token exposed; the response rule contains it"
as secret-scanner signal post --identity "$token_id" --kind secret_exposed --severity high \
    --source secret-scanner --summary "GitHub token of billing-sync found in a public repository" \
    --evidence-ref "https://scanner.example.test/findings/42" -o json >"$WORK/signal.json"
chain=$(json '["signal_id"]' <"$WORK/signal.json")
say "signal $chain: every later step carries it as correlation id"
for _ in $(seq 50); do
    state=$(quiet operator identity show "$token_id" -o json | json '["state"]')
    [ "$state" = restricted ] && break
    sleep 0.2
done
as operator identity list --text "billing-sync GitHub"
say "restricted, it gets no new credential without a grant (exit 5):"
rc=0
as soar credential issue --identity "$token_id" --incident INC-42 --scope repo:write --reason "a fresh token" || rc=$?
[ "$rc" -eq 5 ]

step "3. The SOAR bot rotates the token for INC-42 (a 30-minute task window)"
rotate=(credential rotate --identity "$token_id" --incident INC-42 --window-minutes 30 --scope repo:write
    --reason "the token leaked in a public repository" --correlation-id "$chain")
rc=0
as soar "${rotate[@]}" || rc=$?
if [ "$rc" -ne 6 ]; then
    echo "expected exit 6 (approval required), got $rc" >&2
    exit 1
fi
request=$(quiet operator approval list --incident INC-42 --identity "$token_id" -o json | json '[0]["id"]')
as operator approval show "$request"

step "4. The bot may not approve its own request (approving is a person's act); alice, the technical owner, approves"
if as soar approval approve "$request" --reason "approving myself"; then
    echo "the bot approved its own request" >&2
    exit 1
fi
person alice approval approve "$request" --reason "rotate it now"

step "5. The broker issues the new token, revokes the old one and confirms it is rejected"
as soar "${rotate[@]}" -o json >"$WORK/rotated.json"
# Everything but the new secret.
python3 -c 'import json, sys; r = json.load(sys.stdin); r.pop("token"); print(json.dumps(r, indent=2))' <"$WORK/rotated.json"
[ "$(json '["state"]' <"$WORK/rotated.json")" = confirmed ]
say "the old token's lease:"
as soar lease show "$old_lease"

step "6. On call breaks glass to suspend the connector's AWS access key; a review opens"
person oncall breakglass invoke --action suspend --identity "$aws_key" --incident INC-42 \
    --reason "the same repository holds the connector's AWS key" --correlation-id "$chain"
person oncall identity transition "$aws_key" --to suspended --incident INC-42 \
    --reason "break-glass: the same repository holds this key" --correlation-id "$chain"
as operator review list

step "7. INC-42 closes: every lease tied to it is revoked, and the watch stream shows it"
quiet operator lease watch --incident INC-42 --count 1 >"$WORK/watch.txt" &
watcher=$!
sleep 1
person alice incident close INC-42 --reason "token rotated, AWS key suspended" --correlation-id "$chain"
wait "$watcher"
say "the revocation stream saw:"
cat "$WORK/watch.txt"

step "8. The auditor follows the chain of evidence and verifies the log"
as auditor audit follow --correlation-id "$chain" --idle-seconds 3
as auditor audit verify --vkey "$PKI/audit-log.vkey" --state "$WORK/trusted-checkpoint"
say "the inclusion proof of each step, against the signed checkpoint:"
quiet auditor audit follow --correlation-id "$chain" --idle-seconds 2 -o json >"$WORK/chain.jsonl"
while read -r line; do
    leaf=$(json '["leaf_hash"]' <<<"$line")
    quiet auditor audit proof "$leaf" --vkey "$PKI/audit-log.vkey" -o json | python3 -c '
import json, sys
p = json.load(sys.stdin)
print("  entry %3d %-30s in the signed tree of %d: proof verified" % (p["index"], p["action"], p["tree_size"]))'
done <"$WORK/chain.jsonl"
say "the break-glass review stays open (and is listed with --overdue once due) until completed:"
review=$(quiet operator review list -o json | json '[0]["id"]')
person sam review complete "$review" --note "the suspension was right"
as operator review list

step "Done: the story's records are one chain, $chain"
