#!/usr/bin/env bash
# Builds the image and checks it as it is deployed, on this machine (`make image-check`;
# docs/container.md records a run):
#  1. builds it with scripts/build-image.sh (SKIP_BUILD=1 checks the image as it is);
#  2. runs it as `docker run` does: /readyz, a detection on darknet's dog.jpg, a
#     classification of eagle.jpg, /v2/health/ready, the server's uid, Docker's
#     HEALTHCHECK, then SIGTERM (`docker stop`): exit 0 within the grace period;
#  3. runs it as deploy/k8s does: read-only root with a tmpfs /tmp, every capability
#     dropped, no privilege escalation, deploy/k8s/base/ocellus.env, and a fresh registry
#     volume seeded by `ocellus registry seed-defaults` (the init container, here with no
#     network at all) and served with --registry. The same checks, plus an upload over
#     1 MiB (spooled to /tmp) and a write to the root, which must fail.
# Host networking only (a dockerd without a bridge): the server listens on 127.0.0.1 at
# a free port. Needs docker, curl, python3 and darknet's photos (`make system-deps`).
# Prints the figures; exits 1 when a check fails. Logs stay in the folder it names.
set -euo pipefail
cd "$(dirname "$0")/.."

image="${IMAGE:-ocellus:latest}"
photos=/usr/share/darknet/data
grace=60          # deploy/k8s/base/deployment.yaml's terminationGracePeriodSeconds
ready_limit=300   # its startupProbe: 30 x 10 s
work="$(mktemp -d "${TMPDIR:-/tmp}/ocellus-container-check.XXXXXX")"
name="ocellus-check-$$"
failed=0

cleanup() {
    for c in "$name-plain" "$name-k8s"; do
        docker inspect "$c" >/dev/null 2>&1 || continue
        docker logs "$c" >"$work/$c.log" 2>&1 || true
        docker rm -f "$c" >/dev/null 2>&1 || true
    done
    docker volume rm "$name-registry" >/dev/null 2>&1 || true
}
trap cleanup EXIT

figure() { printf '  %-30s %s\n' "$1" "$2"; }
pass() { figure "$1" "$2"; }
fail() { figure "$1" "FAILED: $2"; failed=1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.1f", b - a}'; }
free_port() {
    python3 -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_ready CONTAINER PORT START: seconds from START to the first 200 from /readyz.
wait_ready() {
    local deadline=$(( $(date +%s) + ready_limit ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        if [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$2/readyz")" = 200 ]
        then
            since "$3"
            return 0
        fi
        [ "$(docker inspect -f '{{.State.Running}}' "$1")" = true ] || return 1
        sleep 0.5
    done
    return 1
}

# post FILE ROUTE PORT: the response body in $work/answer.json; prints the status code.
post() {
    curl -s -o "$work/answer.json" -w '%{http_code}' -F "file=@$1" "http://127.0.0.1:$3$2" || true
}

# Detections as "label score" pairs, best first; classifications as the top 3.
detections() {
    python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))["results"][0]["detections"]
print(", ".join("%s %.2f" % (d["label"], d["score"]) for d in r if d["score"] >= 0.4))' \
        "$work/answer.json"
}
top3() {
    python3 -c 'import json, sys
r = json.load(open(sys.argv[1]))["results"][0]["predictions"][:3]
print(", ".join("%s %.2f" % (p["label"], p["score"]) for p in r))' "$work/answer.json"
}

# The backend each model serves with, from the server's model_loaded log events.
backends() {
    docker logs "$1" 2>&1 | python3 -c 'import json, sys
loaded = []
for line in sys.stdin:
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if isinstance(e, dict) and e.get("event") == "model_loaded":
        loaded.append("%s %s: %s" % (e["model"], e["version"], e["backend"]))
print(", ".join(loaded))'
}

# serve_checks CONTAINER PORT START: the checks both runs make.
serve_checks() {
    local c="$1" port="$2" ready code
    if ready=$(wait_ready "$c" "$port" "$3"); then
        pass "time to ready" "$ready s"
    else
        fail "time to ready" "no 200 from /readyz (the server exited, or $ready_limit s passed)"
        docker logs --tail 20 "$c" 2>&1 | sed 's/^/    /'
        return
    fi
    code=$(post "$photos/dog.jpg" /v1/detect "$port")
    if [ "$code" = 200 ] && grep -q '"label":"dog"' "$work/answer.json"; then
        pass "detect dog.jpg (score >= 0.4)" "$(detections)"
        cp "$work/answer.json" "$work/$c-dog.json"
    else
        fail "detect dog.jpg" "HTTP $code, $(head -c 300 "$work/answer.json")"
    fi
    code=$(post "$photos/eagle.jpg" /v1/classify "$port")
    if [ "$code" = 200 ] && grep -q '"label":"bald eagle"' "$work/answer.json"; then
        pass "classify eagle.jpg (top 3)" "$(top3)"
    else
        fail "classify eagle.jpg" \
            "HTTP $code, no 'bald eagle' in the top 5: $(head -c 300 "$work/answer.json")"
    fi
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v2/health/ready" \
        || true)
    if [ "$code" = 200 ]; then pass "/v2/health/ready" 200; else fail "/v2/health/ready" "$code"; fi
    # The baked int8 variants passed their gate (--require-int8), and seed-defaults
    # publishes them: every model serves int8 in both runs.
    local served
    served=$(backends "$c" || true)
    if [ -n "$served" ] && [ "$(grep -o ': [a-z0-9]*' <<<"$served" | sort -u)" = ": int8" ]; then
        pass "backends" "$served"
    else
        fail "backends" "${served:-none} (expected int8 for every model)"
    fi
    local ids
    ids=$(docker exec "$c" awk '/^(Uid|Gid|CapEff):/ {printf "%s %s ", $1, $2}' \
        /proc/1/status || true)
    case "$ids" in
        "Uid: 10001 Gid: 10001 "*) pass "server process" "$ids" ;;
        *) fail "server process" "$ids (expected uid and gid 10001)" ;;
    esac
}

# stop_checks CONTAINER: SIGTERM, then exit 0 within the grace period.
stop_checks() {
    local t0 took code
    t0=$(now)
    docker stop -t "$grace" "$1" >/dev/null
    took=$(since "$t0")
    code=$(docker inspect -f '{{.State.ExitCode}}' "$1")
    if [ "$code" = 0 ] && awk -v t="$took" -v g="$grace" 'BEGIN {exit !(t < g)}'; then
        pass "SIGTERM (docker stop)" "exit 0 after $took s (grace $grace s)"
    else
        fail "SIGTERM (docker stop)" "exit $code after $took s (grace $grace s)"
    fi
}

[ -f "$photos/dog.jpg" ] && [ -f "$photos/eagle.jpg" ] \
    || { echo "error: no darknet photos in $photos: run \`make system-deps\`" >&2; exit 1; }
echo "ocellus container check (logs in $work)"
if [ -z "${SKIP_BUILD:-}" ]; then
    t0=$(now)
    if IMAGE="$image" scripts/build-image.sh >"$work/build.log" 2>&1; then
        pass "build" "$(since "$t0") s"
    else
        fail "build" "see $work/build.log"; tail -20 "$work/build.log"; exit 1
    fi
fi
docker image inspect "$image" >/dev/null 2>&1 || { fail "image" "$image is missing"; exit 1; }
figure "image" "$image, $(docker image inspect -f '{{.Size}}' "$image" \
    | awk '{printf "%.2f GB", $1 / 1e9}')"

echo "1. as \`docker run\` runs it (the models baked into the image)"
port=$(free_port)
t0=$(now)
docker run -d --name "$name-plain" --network host \
    -e OCELLUS_HOST=127.0.0.1 -e OCELLUS_PORT="$port" "$image" >/dev/null
serve_checks "$name-plain" "$port" "$t0"
health=""
for _ in $(seq 1 40); do  # the HEALTHCHECK runs every 15 s
    health=$(docker inspect "$name-plain" \
        -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' || true)
    [ "$health" != starting ] && break
    sleep 1
done
if [ "$health" = healthy ]; then pass "HEALTHCHECK" "$health"; else fail "HEALTHCHECK" "$health"; fi
stop_checks "$name-plain"

echo "2. as deploy/k8s runs it (read-only root, tmpfs /tmp, the registry volume)"
locked=(--read-only --tmpfs /tmp --cap-drop ALL --security-opt no-new-privileges
        --user 10001:10001 --env-file deploy/k8s/base/ocellus.env
        -v "$name-registry:/registry")
docker volume create "$name-registry" >/dev/null
t0=$(now)
if docker run --rm --network none "${locked[@]}" "$image" \
        ocellus registry --registry /registry seed-defaults >"$work/seed.log" 2>&1; then
    pass "seed-defaults (no network)" "$(since "$t0") s"
else
    fail "seed-defaults (no network)" "see $work/seed.log"; tail -20 "$work/seed.log"; exit 1
fi
port=$(free_port)
t0=$(now)
docker run -d --name "$name-k8s" --network host "${locked[@]}" \
    -e OCELLUS_HOST=127.0.0.1 -e OCELLUS_PORT="$port" "$image" \
    ocellus serve --registry /registry >/dev/null
serve_checks "$name-k8s" "$port" "$t0"
# Over 1 MiB, Starlette spools the upload to /tmp: the tmpfs must take it. A BMP of
# dog.jpg holds the same pixels, so the answer must be the JPEG's.
docker exec "$name-k8s" python -c "import sys; from PIL import Image
Image.open('$photos/dog.jpg').save(sys.stdout.buffer, 'BMP')" >"$work/dog.bmp" || true
code=$(post "$work/dog.bmp" /v1/detect "$port")
size=$(stat -c %s "$work/dog.bmp")
if [ "$code" = 200 ] && [ "$size" -gt 1048576 ] && python3 -c 'import json, sys
a, b = (json.load(open(f))["results"][0]["detections"] for f in sys.argv[1:])
sys.exit(a != b)' "$work/answer.json" "$work/$name-k8s-dog.json"; then
    pass "upload over 1 MiB" "dog.bmp ($size bytes): 200, the JPEG's detections"
else
    fail "upload over 1 MiB" "dog.bmp ($size bytes): HTTP $code, $(head -c 300 "$work/answer.json")"
fi
if out=$(docker exec "$name-k8s" touch /opt/ocellus/cache/probe 2>&1); then
    fail "write to the root" "allowed"
else
    pass "write to the root" "refused: ${out##*: }"
fi
stop_checks "$name-k8s"

if [ "$failed" = 0 ]; then echo "all checks passed"; else echo "some checks FAILED"; fi
exit "$failed"
