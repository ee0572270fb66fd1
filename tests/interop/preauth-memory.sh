#!/usr/bin/env bash
# Usage: tests/interop/preauth-memory.sh IRIS_BINARY [server options...]   (from the repo root)
# Issue 13, defect 2, through the CLI: `iris-rpc server` and 64 TLS connections that each send
# 15 MiB of one unfinished line before authenticating; prints the server's RSS growth.
set -u
IRIS=$1; shift
port=$((30000 + RANDOM % 10000))
"$IRIS" server --port 127.0.0.1:$port --auth s "$@" >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null' EXIT
sleep 1
node "$(dirname "$0")/preauth-memory.js" $port 64 15 $pid
