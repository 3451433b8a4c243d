#!/usr/bin/env bash
# Install the pgvector extension (CREATE EXTENSION vector) into Debian's
# PostgreSQL 15 on bookworm, building it from Debian's own pgvector source
# package (trixie/main, PostgreSQL license). Idempotent: does nothing when
# the extension is already installed for this PostgreSQL major.
# Needs root (apt-get, make install). Uses only deb.debian.org.
set -euo pipefail

PG_MAJOR="${PG_MAJOR:-15}"
PG_CONFIG="/usr/lib/postgresql/${PG_MAJOR}/bin/pg_config"
SHAREDIR="/usr/share/postgresql/${PG_MAJOR}"
PKGLIBDIR="/usr/lib/postgresql/${PG_MAJOR}/lib"

if [ -f "${SHAREDIR}/extension/vector.control" ] && [ -f "${PKGLIBDIR}/vector.so" ]; then
  echo "pgvector: already installed for PostgreSQL ${PG_MAJOR} ($(grep default_version "${SHAREDIR}/extension/vector.control"))"
  exit 0
fi

export DEBIAN_FRONTEND=noninteractive
# 1) Build dependencies (bookworm main): PGXS headers + compiler.
if ! [ -x "${PG_CONFIG}" ] || ! dpkg -s "postgresql-server-dev-${PG_MAJOR}" >/dev/null 2>&1 \
   || ! command -v make >/dev/null || ! command -v gcc >/dev/null; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "postgresql-server-dev-${PG_MAJOR}" build-essential
fi

# 2) Source: Debian's pgvector source package, fetched with apt through a
#    private, throw-away apt state (the system's sources and lists are untouched).
WORK="$(mktemp -d /tmp/pgvector-build.XXXXXX)"
trap 'rm -rf "${WORK}"' EXIT
chmod 755 "${WORK}"
mkdir -p "${WORK}/lists/partial" "${WORK}/parts" "${WORK}/src"
echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
  > "${WORK}/sources.list"
APT_OPTS=(-o "Dir::Etc::SourceList=${WORK}/sources.list" -o "Dir::Etc::SourceParts=${WORK}/parts"
          -o "Dir::State::Lists=${WORK}/lists" -o "APT::Sandbox::User=root")
apt-get "${APT_OPTS[@]}" update -qq
( cd "${WORK}/src" && apt-get "${APT_OPTS[@]}" source -qq --download-only pgvector )
tar -xzf "${WORK}"/src/pgvector_*.orig.tar.gz -C "${WORK}/src"
cd "${WORK}"/src/pgvector-*/

# 3) Build + install. OPTFLAGS="" drops -march=native (as Debian's own
#    package does), so the .so is portable across x86_64 CPUs.
make -s -j"$(nproc)" PG_CONFIG="${PG_CONFIG}" OPTFLAGS=""
make -s install PG_CONFIG="${PG_CONFIG}" OPTFLAGS=""
echo "pgvector: installed $(grep default_version "${SHAREDIR}/extension/vector.control") for PostgreSQL ${PG_MAJOR}"
