#!/usr/bin/env bash
# Spark 4 needs a full JDK 17 (the module jdk.incubator.vector, which slim runtimes lack).
set -euo pipefail
java_bin="${JAVA_HOME:+$JAVA_HOME/bin/}java"
if ! command -v "$java_bin" >/dev/null 2>&1; then
  echo "error: no 'java' found. Install a JDK 17 (Debian: apt-get install openjdk-17-jdk-headless) or set JAVA_HOME." >&2
  exit 1
fi
version=$("$java_bin" -version 2>&1 | head -1 | sed -E 's/.*version "([0-9]+).*/\1/')
if [ "$version" != "17" ]; then
  echo "error: Spark 4.1 here is pinned to a JDK 17; '$java_bin' is version $version. Set JAVA_HOME to a JDK 17." >&2
  exit 1
fi
if ! "$java_bin" --list-modules 2>/dev/null | grep -q '^jdk.incubator.vector'; then
  echo "error: '$java_bin' is a JDK 17 without jdk.incubator.vector (a slim runtime?). Spark 4 needs a full JDK 17." >&2
  exit 1
fi
