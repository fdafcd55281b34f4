#!/usr/bin/env bash
# Build the fleet-test binaries into collector-config/.bin/ (git-ignored):
#
#   .bin/otelcol-delivery  an OpenTelemetry Collector with exactly the components
#                          otelcol.yaml uses, all at collector-contrib v0.161.0
#                          (otelcol/manifest.yaml; generated sources, go.mod, go.sum)
#   .bin/jaeger            Jaeger v2, Go module github.com/jaegertracing/jaeger
#                          v1.75.0 (jaeger/go.mod, go.sum), run with in-memory storage
#
# Every module is pinned in go.mod and checksummed in go.sum (-mod=readonly: a build
# never changes them). Builds are reproducible (-trimpath, no VCS stamp, no build id,
# CGO off). Cached: a binary is rebuilt only when its module files or the Go version
# change (a stamp with their hash sits beside it), so a second run takes a second.
#
#   collector-config/build.sh               build what is missing or stale
#   collector-config/build.sh --force       rebuild both
#   collector-config/build.sh --regenerate  rerun the Collector Builder on
#                                           otelcol/manifest.yaml (after editing it),
#                                           then build
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
bin="$here/.bin"
force=0
regenerate=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        --regenerate) regenerate=1; force=1 ;;
        *) echo "usage: $0 [--force] [--regenerate]" >&2; exit 2 ;;
    esac
done

if ! command -v go >/dev/null 2>&1; then
    echo "build.sh: no 'go' on PATH; the fleet tests need Go 1.26 or newer" >&2
    exit 1
fi

export CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS="-trimpath -mod=readonly -buildvcs=false"
BUILDER_VERSION=v0.161.0
JAEGER_MODULE=github.com/jaegertracing/jaeger

mkdir -p "$bin"

if [[ $regenerate == 1 ]]; then
    (cd "$here/otelcol" && GOFLAGS="-trimpath -mod=mod" \
        go run "go.opentelemetry.io/collector/cmd/builder@$BUILDER_VERSION" \
        --config manifest.yaml --skip-compilation)
fi

# The inputs of one binary: the Go version, this script, and its module's go.mod,
# go.sum, Go sources and builder manifest.
stamp_of() {
    (go version; cat "$here/build.sh"; cd "$here/$1" && for f in $(ls | LC_ALL=C sort); do
        case "$f" in go.mod|go.sum|*.go|manifest.yaml) echo "== $f"; cat "$f" ;; esac
    done) | sha256sum | cut -d' ' -f1
}

# build NAME DIR PACKAGE [LDFLAGS...]
build() {
    local name=$1 dir=$2 pkg=$3
    shift 3
    local want
    want="$(stamp_of "$dir")"
    if [[ $force == 0 && -x $bin/$name && -f $bin/$name.stamp && "$(cat "$bin/$name.stamp")" == "$want" ]]; then
        echo "$name: up to date ($bin/$name)"
        return
    fi
    local started=$SECONDS
    # Fetch the pinned modules first, with two retries: a passing network hiccup
    # should not fail a CI run.
    local try
    for try in 1 2 3; do
        (cd "$here/$dir" && go mod download) && break
        [[ $try == 3 ]] && { echo "build.sh: could not download $name's modules" >&2; exit 1; }
        sleep $((try * 10))
    done
    (cd "$here/$dir" && go build -ldflags "-s -w -buildid= $*" -o "$bin/$name.tmp" "$pkg")
    mv -f "$bin/$name.tmp" "$bin/$name"
    echo "$want" > "$bin/$name.stamp"
    echo "$name: built in $((SECONDS - started)) s ($bin/$name)"
}

build otelcol-delivery otelcol .
jaeger_version="$(cd "$here/jaeger" && go list -m -f '{{.Version}}' "$JAEGER_MODULE")"
build jaeger jaeger "$JAEGER_MODULE/cmd/jaeger" \
    "-X $JAEGER_MODULE/internal/version.latestVersion=$jaeger_version"

"$bin/otelcol-delivery" --version
echo "jaeger: Go module $JAEGER_MODULE $jaeger_version (Jaeger v2)"
