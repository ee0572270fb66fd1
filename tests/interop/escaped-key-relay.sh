#!/usr/bin/env bash
# Usage: tests/interop/escaped-key-relay.sh IRIS_BINARY   (from the repo root, after
# `npm ci --prefix tests/interop`). Reproduces issue 13, defect 1, through the CLI:
# A server (--echo), `iris-rpc router --to` it, a good client making a request every 50 ms
# (99 in all) through the router, and a legacy peer on the router's frontend sending
# {"\u005fr":{"uuid":"x"},"op":"x"} every 500 ms meanwhile. Prints how many requests failed.
set -u
IRIS=$1
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$dir"' EXIT
"$IRIS" cert --out "$dir" >/dev/null
p1=$((20000 + RANDOM % 10000)); p2=$((p1 + 1))
"$IRIS" server --port 127.0.0.1:$p1 --auth s --echo --uuid backend >"$dir/server.log" 2>&1 &
sleep 0.5
"$IRIS" router --port 127.0.0.1:$p2 --auth s --to 127.0.0.1:$p1 --uuid router >"$dir/router.log" 2>&1 &
for _ in $(seq 100); do grep -q '"side":"backend"' "$dir/router.log" && break; sleep 0.1; done
cfg=$(node -e 'const fs=require("fs");console.log(JSON.stringify({role:"client",address:"127.0.0.1:"+process.argv[1],auth:"s",uuid:"hostile",key:fs.readFileSync(process.argv[2]+"/key.pem","utf8"),cert:fs.readFileSync(process.argv[2]+"/cert.pem","utf8")}))' $p2 "$dir")
mkfifo "$dir/hostile.in"
node tests/interop/legacy-peer.js "$cfg" <"$dir/hostile.in" >"$dir/hostile.log" 2>/dev/null &
exec 3>"$dir/hostile.in"
for _ in $(seq 100); do grep -q '"ev":"connect"' "$dir/hostile.log" && break; sleep 0.1; done
( for _ in $(seq 12); do
    echo '{"cmd":"dispatchText","text":"{\"\\u005fr\":{\"uuid\":\"x\"},\"op\":\"x\"}"}' >&3
    sleep 0.5
  done ) &
hostile=$!
for i in $(seq 99); do echo "{\"op\":\"work\",\"i\":$i}"; sleep 0.05; done \
  | "$IRIS" client --address 127.0.0.1:$p2 --auth s --request --timeout 5000 >"$dir/good.log" 2>&1
kill $hostile 2>/dev/null
ok=$(grep -c '"response"' "$dir/good.log"); failed=$(grep -c '"error"' "$dir/good.log")
drops=$(grep -c '"event":"disconnect","side":"backend"' "$dir/router.log")
echo "requests: $ok answered, $failed failed of 99; router backend link dropped $drops times"
grep '"error"' "$dir/good.log" | head -2
