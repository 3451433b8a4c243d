#!/usr/bin/env bash
# Installs the bench's peers at their pinned versions into bench/.peers/ (git-ignored):
#   bench/.peers/node/bun/        bun + hono + elysia      (bench/peers/bun/package.json)
#   bench/.peers/node/hono/       hono + @hono/node-server (bench/peers/hono/package.json)
#   bench/.peers/node/portkey/    @portkey-ai/gateway      (bench/peers/portkey/package.json)
#   bench/.peers/fastapi-venv/    bench/peers/fastapi-requirements.txt
#   bench/.peers/litellm-venv/    bench/peers/litellm-requirements.txt
# Idempotent: a peer whose stamp matches its pin file is skipped. bun, hono, fastapi and litellm
# are required (exit 1 if one fails); portkey is optional (a warning only). npm installs Bun too:
# the `bun` package ships its binary, which then runs the Hono and Elysia peers on its own.
#
#   bash bench/peers/install.sh [bun|hono|fastapi|litellm|portkey ...]   # default: all
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DEST="${BENCH_PEERS_DIR:-$(dirname "$HERE")/.peers}"
PYTHON="${BENCH_PEERS_PYTHON:-python3}"
mkdir -p "$DEST/node"

why=""  # the last thing that went wrong, kept for $DEST/NAME.why
say() { printf 'peers: %s\n' "$*" >&2; why="$*"; }

first_error() { grep -i 'error' <<<"$1" | grep -v -e 'error code' -e 'complete log' | head -1 | cut -c1-200; }

# A stamp is the content of the pin files that an install was made from; equal means done.
stamp_of() { cat "$@" | sha256sum | cut -d' ' -f1; }
is_current() { [[ -f "$1/.bench-stamp" && "$(cat "$1/.bench-stamp")" == "$2" ]]; }

install_node() {  # name: installs bench/peers/NAME/package.json into $DEST/node/NAME
    local name=$1 src="$HERE/$1" dir="$DEST/node/$1" stamp
    command -v node >/dev/null && command -v npm >/dev/null || { say "$name: node/npm not found"; return 1; }
    stamp="$(stamp_of "$src/package.json")"
    if is_current "$dir" "$stamp" && [[ -d "$dir/node_modules" ]]; then
        say "$name: up to date in $dir"
        fresh=0
    else
        say "$name: npm install into $dir"
        rm -rf "$dir" && mkdir -p "$dir" && cp "$src/package.json" "$dir/" || return 1
        local out
        out="$(cd "$dir" && npm install --no-audit --no-fund --no-update-notifier \
            --loglevel=error --no-package-lock 2>&1)"
        local rc=$?
        [[ -n $out ]] && printf '%s\n' "$out" >&2
        [[ $rc -eq 0 ]] || { say "$name: npm install failed: $(first_error "$out")"; return 1; }
        echo "$stamp" >"$dir/.bench-stamp"
    fi
    # The app sources live in the repo; node and bun resolve imports from the file's own folder.
    for f in "$src"/*.mjs "$src"/*.ts; do
        [[ -e "$f" ]] && { cmp -s "$f" "$dir/$(basename "$f")" || cp "$f" "$dir/"; }
    done
    return 0
}

install_venv() {  # name: installs bench/peers/NAME-requirements.txt into $DEST/NAME-venv
    local name=$1 req="$HERE/$1-requirements.txt" dir="$DEST/$1-venv" stamp
    stamp="$(stamp_of "$req")"
    if is_current "$dir" "$stamp" && [[ -x "$dir/bin/python" ]]; then
        say "$name: up to date in $dir"
        fresh=0
        return 0
    fi
    say "$name: pip install -r $(basename "$req") into $dir"
    rm -rf "$dir"
    "$PYTHON" -m venv "$dir" || { say "$name: cannot make a venv with $PYTHON"; return 1; }
    # (grep drops pip's notes about local index folders that this machine's pip.conf names)
    local out rc
    out="$("$dir/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req" 2>&1)"
    rc=$?
    out="$(grep -v 'is ignored: it is neither a file nor a directory' <<<"$out")"
    [[ -n $out ]] && printf '%s\n' "$out" >&2
    [[ $rc -eq 0 ]] || { say "$name: pip install failed: $(first_error "$out")"; return 1; }
    echo "$stamp" >"$dir/.bench-stamp"
}

check_bun() { (cd "$DEST/node/bun" && node_modules/.bin/bun -e "await import('hono'); await import('elysia')"); }
check_hono() { (cd "$DEST/node/hono" && node -e "import('hono').then(() => import('@hono/node-server'))"); }
check_portkey() { [[ -f "$DEST/node/portkey/node_modules/@portkey-ai/gateway/build/start-server.js" ]]; }
check_fastapi() { "$DEST/fastapi-venv/bin/python" -c "import fastapi, uvicorn, httpx, uvloop, httptools"; }
check_litellm() { [[ -x "$DEST/litellm-venv/bin/litellm" ]] && "$DEST/litellm-venv/bin/python" -c "import litellm.proxy.proxy_server" 2>/dev/null; }

wanted=("$@")
[[ ${#wanted[@]} -eq 0 ]] && wanted=(bun hono fastapi litellm portkey)
failed=()
for name in "${wanted[@]}"; do
    start=$SECONDS
    fresh=1  # set to 0 by an install_* that found NAME already in place
    case $name in
        bun | hono | portkey) install_node "$name" ;;
        fastapi | litellm) install_venv "$name" ;;
        *) say "unknown peer: $name"; failed+=("$name"); continue ;;
    esac
    ok=$?
    if [[ $ok -eq 0 && $fresh -eq 1 ]] && ! "check_$name" >/dev/null 2>&1; then
        say "$name: installed but does not load"; ok=1
        rm -f "$DEST/node/$name/.bench-stamp" "$DEST/$name-venv/.bench-stamp"
    fi
    # bench/contenders.py reports NAME.why as the reason a peer is missing.
    if [[ $ok -ne 0 ]]; then
        echo "$why" >"$DEST/$name.why"
        if [[ $name == portkey ]]; then
            say "WARNING: portkey (optional) is not available; the bench goes on without it"
        else
            failed+=("$name")
        fi
    else
        rm -f "$DEST/$name.why"
        say "$name: ok ($((SECONDS - start)) s)"
    fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
    say "FAILED: ${failed[*]} (required peers); see the messages above"
    exit 1
fi
say "all done in $DEST"
