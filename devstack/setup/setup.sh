#!/usr/bin/env bash
# One idempotent set-up step (make setup): venv from the lock, Maven jars, redis-server, stubs, lookupd.
# Each part is skipped when its stamp matches its inputs, so a second run does no network work.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
VENV=$ROOT/.venv
CACHE=$ROOT/.cache
STAMPS=$CACHE/stamps
UV_VERSION=0.13.9
KAFKA_CONNECTOR=org.apache.flink:flink-sql-connector-kafka:5.0.0-2.2
DEP_PLUGIN=org.apache.maven.plugins:maven-dependency-plugin:3.8.1
mkdir -p "$STAMPS"

fail() { echo "setup: $1" >&2; echo "setup: fix the cause above, then run 'make setup' again (finished parts are skipped)" >&2; exit 1; }
stamp_of() { cat "$@" | sha256sum | cut -c1-16; }

# 1. Python environment from the lock (uv installs the exact pins in one go)
want=$(stamp_of requirements.lock pyproject.toml)
if [ "$(cat "$STAMPS/venv" 2>/dev/null)" != "$want" ] || [ ! -x "$VENV/bin/python" ]; then
  echo "setup: Python environment (.venv) from requirements.lock"
  [ -x "$VENV/bin/python" ] || python3.11 -m venv "$VENV" 2>/dev/null || python3 -m venv "$VENV" || fail "could not create $VENV"
  "$VENV/bin/python" -m pip install -q "uv==$UV_VERSION" || fail "PyPI: installing uv $UV_VERSION failed"
  "$VENV/bin/python" -m uv pip install -q --python "$VENV/bin/python" -r requirements.lock || fail "PyPI: installing requirements.lock failed"
  "$VENV/bin/python" -m uv pip install -q --python "$VENV/bin/python" --no-deps -e . || fail "installing the streamrank package failed"
  echo "$want" > "$STAMPS/venv"
fi

# 2. Jars from Maven Central: Flink's Kafka SQL connector and Apache Kafka's broker
want=$(stamp_of devstack/maven/kafka-broker.pom.xml devstack/setup/setup.sh)
if [ "$(cat "$STAMPS/jars" 2>/dev/null)" != "$want" ]; then
  command -v mvn >/dev/null || fail "Maven (mvn) is not installed"
  echo "setup: jars from Maven Central (Flink Kafka connector, Kafka broker)"
  rm -rf "$CACHE/jars"
  mvn -q -B "$DEP_PLUGIN:copy" -Dartifact="$KAFKA_CONNECTOR" -DoutputDirectory="$CACHE/jars/flink" \
    || fail "Maven Central: fetching $KAFKA_CONNECTOR failed"
  mvn -q -B -f devstack/maven/kafka-broker.pom.xml "$DEP_PLUGIN:copy-dependencies" \
    -DoutputDirectory="$CACHE/jars/kafka" -DincludeScope=runtime \
    || fail "Maven Central: fetching the Kafka broker jars failed"
  echo "$want" > "$STAMPS/jars"
fi

# 2b. streamrank's JVM functions (jobs/java), built with Maven
want=$(stamp_of jobs/java/pom.xml jobs/java/src/main/java/io/streamrank/udf/*.java)
if [ "$(cat "$STAMPS/udf" 2>/dev/null)" != "$want" ] || [ ! -f "$CACHE/udf/streamrank-udf.jar" ]; then
  echo "setup: building the job's JVM functions (jobs/java)"
  mvn -q -B -f jobs/java/pom.xml package -DskipTests || fail "Maven build of jobs/java failed"
  mkdir -p "$CACHE/udf" && cp jobs/java/target/streamrank-udf.jar "$CACHE/udf/"
  echo "$want" > "$STAMPS/udf"
fi

# 3. Redis from Debian's packages
if ! command -v redis-server >/dev/null; then
  echo "setup: installing Debian's redis-server"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq || fail "apt-get update failed (Debian package mirrors)"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null \
    || fail "apt-get install redis-server failed"
  # the package starts a system Redis on 6379; streamrank starts its own on loopback ports
  ($SUDO service redis-server stop || true) >/dev/null 2>&1
fi

# 4. gRPC stubs, generated from serving/proto (not checked in)
want=$(stamp_of serving/proto/streamrank/v1/*.proto requirements.lock)
if [ "$(cat "$STAMPS/stubs" 2>/dev/null)" != "$want" ]; then
  rm -rf serving/generated
  "$VENV/bin/python" -c "from serving.stubs import generate; generate()" || fail "generating gRPC stubs failed"
  echo "$want" > "$STAMPS/stubs"
fi
# 5. lookupd, the compiled lookup service (serving/lookupd): Go stubs from the same .proto, then
#    go build. Go comes with the machine; modules and the two protoc plugins from the Go module proxy.
want=$(stamp_of serving/proto/streamrank/v1/*.proto serving/lookupd/go.mod serving/lookupd/go.sum \
  serving/lookupd/*.go devstack/setup/setup.sh)
if [ "$(cat "$STAMPS/lookupd" 2>/dev/null)" != "$want" ] || [ ! -x "$CACHE/bin/lookupd" ]; then
  command -v go >/dev/null || fail "Go is not installed (https://go.dev/dl/); it builds serving/lookupd"
  echo "setup: building lookupd (serving/lookupd, Go)"
  GOBIN=$CACHE/go/bin go install google.golang.org/protobuf/cmd/protoc-gen-go@v1.35.2 \
    || fail "Go module proxy: installing protoc-gen-go failed"
  GOBIN=$CACHE/go/bin go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1 \
    || fail "Go module proxy: installing protoc-gen-go-grpc failed"
  rm -rf serving/lookupd/internal/pb
  map=Mstreamrank/v1/recommendations.proto=streamrank/lookupd/internal/pb
  "$VENV/bin/python" -m grpc_tools.protoc -Iserving/proto \
    --plugin=protoc-gen-go="$CACHE/go/bin/protoc-gen-go" --plugin=protoc-gen-go-grpc="$CACHE/go/bin/protoc-gen-go-grpc" \
    --go_out=serving/lookupd --go_opt=module=streamrank/lookupd,$map \
    --go-grpc_out=serving/lookupd --go-grpc_opt=module=streamrank/lookupd,$map \
    streamrank/v1/recommendations.proto || fail "generating lookupd's Go stubs failed"
  # static (no cgo): the same binary runs in the Kubernetes image (deploy/k8s/Dockerfile)
  (cd serving/lookupd && CGO_ENABLED=0 go build -trimpath -o "$CACHE/bin/lookupd" .) || fail "go build of serving/lookupd failed"
  echo "$want" > "$STAMPS/lookupd"
fi
# 6. The Kubernetes manifests' checker (tests/unit/test_k8s.py): kustomize from the Go module proxy
#    renders deploy/k8s; kubernetes-models from the npm registry validates each object against
#    Kubernetes' schemas and the Flink Kubernetes Operator's.
want=$(stamp_of deploy/k8s/check/package.json deploy/k8s/check/package-lock.json devstack/setup/setup.sh)
if [ "$(cat "$STAMPS/k8s-check" 2>/dev/null)" != "$want" ] || [ ! -x "$CACHE/go/bin/kustomize" ] \
    || [ ! -d deploy/k8s/check/node_modules ]; then
  command -v npm >/dev/null || fail "Node.js and npm are not installed; they check deploy/k8s"
  echo "setup: the Kubernetes manifests' checker (kustomize, kubernetes-models)"
  GOBIN=$CACHE/go/bin go install sigs.k8s.io/kustomize/kustomize/v5@v5.7.1 \
    || fail "Go module proxy: installing kustomize failed"
  npm ci --prefix deploy/k8s/check --no-audit --no-fund --loglevel=error \
    || fail "npm registry: installing deploy/k8s/check (package-lock.json) failed"
  echo "$want" > "$STAMPS/k8s-check"
fi
# 7. The web SDK (serving/web: TypeScript, built with tsc from the npm registry) and the browser
#    its test drives: Debian's chromium, through puppeteer-core (which downloads no browser).
if ! command -v chromium >/dev/null; then
  echo "setup: installing Debian's chromium (the web SDK's browser test)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq || fail "apt-get update failed (Debian package mirrors)"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null \
    || fail "apt-get install chromium failed"
fi
want=$(stamp_of serving/web/package.json serving/web/package-lock.json serving/web/tsconfig.json serving/web/src/*.ts)
if [ "$(cat "$STAMPS/web" 2>/dev/null)" != "$want" ] || [ ! -f serving/web/dist/streamrank.js ]; then
  command -v npm >/dev/null || fail "Node.js and npm are not installed; they build serving/web"
  echo "setup: building the web SDK (serving/web)"
  PUPPETEER_SKIP_DOWNLOAD=1 npm ci --prefix serving/web --no-audit --no-fund --loglevel=error \
    || fail "npm registry: installing serving/web (package-lock.json) failed"
  npm run --prefix serving/web build --silent || fail "tsc build of serving/web failed"
  echo "$want" > "$STAMPS/web"
fi
echo "setup: ready (.venv, .cache/jars, redis-server, serving/generated, .cache/bin/lookupd, k8s checker, serving/web, chromium)"
