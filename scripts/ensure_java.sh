#!/usr/bin/env bash
# Spark needs a Java runtime, 17 or newer. Use the one on PATH (or $JAVA_HOME) when it is new
# enough; otherwise install Debian's openjdk-17-jre-headless when we can, or say how.
set -euo pipefail

java_major() {
  local bin="$1"
  "$bin" -version 2>&1 | awk -F'"' '/version/ {print $2; exit}' | awk -F. '{ if ($1 == "1") print $2; else print $1 }'
}

for candidate in "${JAVA_HOME:+$JAVA_HOME/bin/java}" "$(command -v java || true)"; do
  if [ -n "$candidate" ] && [ -x "$candidate" ]; then
    major="$(java_major "$candidate" || echo 0)"
    if [ "${major:-0}" -ge 17 ] 2>/dev/null; then
      echo "java: $candidate (version $major) is fine for Spark"
      exit 0
    fi
    echo "java: $candidate is version ${major:-unknown}; Spark needs 17 or newer" >&2
  fi
done

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  echo "java: installing openjdk-17-jre-headless with apt-get" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  exit 0
fi
if command -v apt-get >/dev/null 2>&1 && command -v sudo >/dev/null 2>&1; then
  echo "java: installing openjdk-17-jre-headless with sudo apt-get" >&2
  sudo DEBIAN_FRONTEND=noninteractive apt-get update -qq
  sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jre-headless >/dev/null
  exit 0
fi
cat >&2 <<'MSG'
java: no Java 17+ runtime found, and it cannot be installed automatically here.
Install one, then re-run:
  Debian/Ubuntu:  sudo apt-get install openjdk-17-jre-headless
  macOS:          brew install openjdk@17
  or set JAVA_HOME to an existing JDK/JRE 17+.
MSG
exit 1
