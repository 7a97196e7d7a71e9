#!/usr/bin/env bash
# `make run`: build, start the gateway with conf/tollgate.toml, and on first start create a
# demo account with $10 of credit and an API key, so the README's first curl just works.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --bin tollgate
BIN=target/release/tollgate
CONFIG=${TOLLGATE_CONFIG:-conf/tollgate.toml}
mkdir -p data

# A development admin token, generated once and kept (untracked) in data/.
if [ -z "${TOLLGATE_ADMIN_TOKEN:-}" ]; then
  [ -s data/admin-token ] || head -c 24 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' > data/admin-token
  TOLLGATE_ADMIN_TOKEN=$(cat data/admin-token)
fi
export TOLLGATE_ADMIN_TOKEN

"$BIN" check --config "$CONFIG"
"$BIN" serve --config "$CONFIG" &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID' INT TERM

ADDR=127.0.0.1:8080
for _ in $(seq 1 100); do
  curl -fsS "http://$ADDR/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done

if [ ! -s data/demo-key ]; then
  AUTH="Authorization: Bearer $TOLLGATE_ADMIN_TOKEN"
  ACCOUNT=$(curl -fsS -H "$AUTH" -H 'content-type: application/json' \
    -d '{"email":"demo@localhost"}' "http://$ADDR/v1/admin/accounts" | sed -E 's/.*"id":([0-9]+).*/\1/')
  curl -fsS -H "$AUTH" -H 'content-type: application/json' -d '{"amount_usd":"10.00","note":"make run demo credit"}' \
    "http://$ADDR/v1/admin/accounts/$ACCOUNT/credits" >/dev/null
  curl -fsS -H "$AUTH" -H 'content-type: application/json' -d '{"name":"demo"}' \
    "http://$ADDR/v1/admin/accounts/$ACCOUNT/keys" | sed -E 's/.*"key":"([^"]+)".*/\1/' > data/demo-key
fi

cat <<MSG

  Tollgate is running on http://$ADDR  (metrics: http://127.0.0.1:9464/metrics)

  Admin token (kept in data/admin-token):  $TOLLGATE_ADMIN_TOKEN
  Demo API key with \$10 credit (kept in data/demo-key):  $(cat data/demo-key)

  Try it:
    curl http://$ADDR/v1/chat/completions \\
      -H "Authorization: Bearer $(cat data/demo-key)" -H 'content-type: application/json' \\
      -d '{"model":"mock/echo-1","messages":[{"role":"user","content":"Hello!"}]}'

  Another key:  curl -H "Authorization: Bearer \$(cat data/admin-token)" -d '{"name":"mine"}' \\
                  http://$ADDR/v1/admin/accounts/1/keys
  Stop with Ctrl-C (graceful drain).

MSG
wait $PID
