#!/usr/bin/env bash
# Proves that the README's quick start works on a brand-new Debian 12: bootstraps a minimal
# bookworm root with debootstrap, clones this checkout's committed HEAD into it and runs
# scripts/demo.sh and scripts/test.sh there, as root, with nothing else installed.
# See --help, and docs/reliability.md ("Set-up on a fresh machine").
set -euo pipefail
# All of it in one { } block, which bash reads whole before running it: committing (or checking
# out) a new version of this file while a run is under way must not change the running one.
{

usage() {
  cat <<'EOF'
Usage: scripts/fresh-machine.sh [--dir DIR] [--keep] [--only demo|test] [--reuse-root]
                                [--cache-dir DIR]

Run as root. Makes a brand-new Debian 12 (bookworm) root with `debootstrap --variant=minbase`,
from the same mirror this machine's apt sources use (/etc/apt/sources.list and
/etc/apt/sources.list.d/*.sources), with this machine's apt proxy / fetch settings, then runs
the README's two quick-start commands inside it with chroot:

    cd /root/sae && scripts/demo.sh && scripts/test.sh

printing how many seconds debootstrap, demo.sh and test.sh took. Exits non-zero when any
step fails.

What is tested is the checkout's COMMITTED HEAD: the repository is `git clone`d into
DIR/root/sae, so uncommitted or untracked work is NOT included. Commit first. A ../shared
folder beside the checkout, if there is one, is copied beside the clone (as CI has it).

Options:
  --dir DIR        where to make the root (default /var/tmp/sae-fresh)
  --keep           keep the root afterwards, for inspection (chroot DIR bash); by default it
                   is unmounted and removed at the end
  --only demo|test run only scripts/demo.sh or only scripts/test.sh
  --reuse-root     skip debootstrap when DIR already holds a root that this script made
                   (kept with --keep), to iterate faster. Packages that an earlier run
                   installed are then already there, so this is NOT the proof: the proof is
                   a run from a fresh debootstrap (without --reuse-root).
  --cache-dir DIR  keep downloaded .deb files here between runs (default
                   /var/cache/sae-fresh-debs): debootstrap's and those apt-get installs
                   inside the root. Saves download time only; the root is still fresh.
  -h, --help       this text

Needs: root, debootstrap (installed with apt-get when missing), git, and a few GB of disk.
The /proc, /sys, /dev, /dev/pts mounts and the tmpfs /tmp and /dev/shm inside DIR are
unmounted on exit, also on failure or Ctrl-C.
EOF
}

DIR=/var/tmp/sae-fresh
KEEP=0
ONLY=
REUSE=0
CACHE=/var/cache/sae-fresh-debs
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) DIR=${2:?--dir needs a directory}; shift 2 ;;
    --dir=*) DIR=${1#--dir=}; shift ;;
    --keep) KEEP=1; shift ;;
    --only) ONLY=${2:?--only needs demo or test}; shift 2 ;;
    --only=*) ONLY=${1#--only=}; shift ;;
    --reuse-root) REUSE=1; shift ;;
    --cache-dir) CACHE=${2:?--cache-dir needs a directory}; shift 2 ;;
    --cache-dir=*) CACHE=${1#--cache-dir=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "fresh-machine: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$ONLY" in ""|demo|test) ;; *) echo "fresh-machine: --only takes demo or test, not '$ONLY'" >&2; exit 2 ;; esac
if [ "$(id -u)" != 0 ]; then
  echo "fresh-machine: must run as root (debootstrap, mount and chroot need it): sudo $0 $*" >&2
  exit 2
fi

REPO=$(cd "$(dirname "$0")/.." && pwd)
DIR=$(realpath -m "$DIR")
CACHE=$(realpath -m "$CACHE")
case "$DIR" in /|/bin|/boot|/dev|/etc|/home|/lib*|/opt|/proc|/root|/run|/sbin|/srv|/sys|/tmp|/usr|/var|/var/tmp)
  echo "fresh-machine: refusing --dir $DIR (choose a new directory of its own)" >&2; exit 2 ;;
esac
MARKER="$DIR/.sae-fresh-root"       # written before debootstrap: this script made DIR
COMPLETE="$DIR/.sae-fresh-complete" # written once debootstrap succeeded: --reuse-root may use it
OWNED=0                             # 1 once DIR is known to be ours to remove
log() { echo "fresh-machine: $*"; }

# ---- the mirror, from this machine's apt sources (never a host written here) ----
# Prints "URI SUITE" for every enabled `deb` entry, one-line and deb822 formats.
apt_entries() {
  if [ -f /etc/apt/sources.list ]; then
    sed -e 's/#.*//' -e 's/\[[^]]*\]//g' /etc/apt/sources.list | awk '$1 == "deb" { print $2, $3 }'
  fi
  local f
  for f in /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] && sed -e 's/#.*//' -e 's/\[[^]]*\]//g' "$f" | awk '$1 == "deb" { print $2, $3 }'
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk '
      function flush() {
        if (types ~ /(^| )deb( |$)/ && tolower(enabled) != "no" && uris != "")
          { n = split(uris, u, " "); m = split(suites, s, " "); for (j = 1; j <= m; j++) print u[1], s[j] }
        types = ""; uris = ""; suites = ""; enabled = ""
      }
      /^[ \t]*#/ { next }
      /^[ \t]*$/ { flush(); next }
      {
        key = tolower($1); sub(/:$/, "", key); val = $0; sub(/^[^:]*:[ \t]*/, "", val)
        if (key == "types") types = val; else if (key == "uris") uris = val
        else if (key == "suites") suites = val; else if (key == "enabled") enabled = val
      }
      END { flush() }' "$f"
  done
}
ENTRIES=$(apt_entries)
uri_for() { awk -v s="$1" '$2 == s { print $1; exit }' <<<"$ENTRIES"; }
MIRROR=$(uri_for bookworm)
if [ -z "$MIRROR" ]; then
  # A host on another Debian release: use the URI of its main archive (its first `deb` entry).
  MIRROR=$(awk 'NR == 1 { print $1 }' <<<"$ENTRIES")
fi
if [ -z "$MIRROR" ]; then
  echo "fresh-machine: found no 'deb' entry in /etc/apt/sources.list or /etc/apt/sources.list.d/ to take the mirror from" >&2
  exit 1
fi
UPDATES=$(uri_for bookworm-updates); UPDATES=${UPDATES:-$MIRROR}
SECURITY=$(uri_for bookworm-security)

# debootstrap fetches with wget, which reads http_proxy/https_proxy, not apt's settings.
eval "$(apt-config shell APT_HTTP_PROXY Acquire::http::Proxy APT_HTTPS_PROXY Acquire::https::Proxy)"
[ -n "${APT_HTTP_PROXY:-}" ] && [ "${APT_HTTP_PROXY}" != DIRECT ] && export http_proxy=$APT_HTTP_PROXY
[ -n "${APT_HTTPS_PROXY:-}" ] && [ "${APT_HTTPS_PROXY}" != DIRECT ] && export https_proxy=$APT_HTTPS_PROXY

# ---- mounts, and their removal on every exit ----
MOUNTS=()   # in mount order; unmounted in reverse
mounts_under() { awk -v d="$DIR" '$2 == d || index($2, d "/") == 1 { print $2 }' /proc/self/mounts; }
unmount_all() {
  local i m
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    m=${MOUNTS[i]}
    umount "$m" 2>/dev/null || { sleep 1; umount "$m" 2>/dev/null; } || umount -l "$m" 2>/dev/null ||
      echo "fresh-machine: could not unmount $m" >&2
  done
  MOUNTS=()
  # anything else under DIR (e.g. left by an earlier, killed run), deepest first
  for m in $(mounts_under | sort -r); do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
}
# Processes still running inside the root (started by this run: a stray test child) would
# keep its mounts busy.
kill_chroot_processes() {
  local p r
  for p in /proc/[0-9]*; do
    r=$(readlink "$p/root" 2>/dev/null) || continue
    if [ "$r" = "$DIR" ]; then kill -KILL "${p#/proc/}" 2>/dev/null || true; fi
  done
}
remove_root() {
  if [ -n "$(mounts_under)" ]; then
    echo "fresh-machine: NOT removing $DIR: still mounted there: $(mounts_under | tr '\n' ' ')" >&2
    return 1
  fi
  rm -rf --one-file-system "$DIR"
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  kill_chroot_processes
  unmount_all
  if [ "$KEEP" = 1 ]; then
    [ -d "$DIR" ] && log "kept the root in $DIR (chroot $DIR /bin/bash; rerun with --reuse-root)"
  elif [ "$OWNED" = 1 ] && [ -d "$DIR" ]; then
    remove_root && log "removed $DIR" || rc=1
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
mnt() {   # mnt TARGET mount-args...
  local target=$1; shift
  mkdir -p "$target"
  mount "$@" "$target"
  MOUNTS+=("$target")
}

# ---- the root ----
if [ -e "$DIR" ] && [ ! -f "$MARKER" ] && [ -n "$(ls -A "$DIR")" ]; then
  echo "fresh-machine: $DIR exists and is not a root made by this script; choose another --dir" >&2
  exit 2
fi
OWNED=1   # absent, empty or made by this script
if [ -e "$DIR" ] && [ -n "$(mounts_under)" ]; then
  log "unmounting what an earlier run left mounted under $DIR"
  unmount_all
fi
if [ "$REUSE" = 1 ] && [ -f "$COMPLETE" ]; then
  log "reusing the root in $DIR (--reuse-root: not a fresh machine, not the proof)"
  T_DEBOOTSTRAP=reused
else
  [ "$REUSE" = 1 ] && log "--reuse-root: no root made by this script in $DIR, bootstrapping one"
  if [ -f "$MARKER" ]; then
    log "removing the earlier root in $DIR"
    remove_root || exit 1
  fi
  if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null ||
      { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
  fi
  mkdir -p "$DIR" "$CACHE/debootstrap"
  touch "$MARKER"
  include=()
  case "$MIRROR$UPDATES$SECURITY" in *https:*) include=(--include=ca-certificates) ;; esac
  log "debootstrap --variant=minbase bookworm $DIR (mirror from this machine's apt sources)"
  t0=$SECONDS
  debootstrap --variant=minbase --cache-dir="$CACHE/debootstrap" "${include[@]}" bookworm "$DIR" "$MIRROR" \
    > "$DIR.debootstrap.log" 2>&1 ||
    { tail -n 30 "$DIR.debootstrap.log" >&2; echo "fresh-machine: debootstrap failed (log: $DIR.debootstrap.log)" >&2; exit 1; }
  T_DEBOOTSTRAP="$((SECONDS - t0)) s"
  rm -f "$DIR.debootstrap.log"
  touch "$COMPLETE"
  log "debootstrap: ${T_DEBOOTSTRAP}"
fi

# apt inside the root: the same mirror URIs as the host, and the host's fetch settings.
{
  echo "deb $MIRROR bookworm main"
  echo "deb $UPDATES bookworm-updates main"
  [ -n "$SECURITY" ] && echo "deb $SECURITY bookworm-security main"
} > "$DIR/etc/apt/sources.list"
for f in /etc/apt/apt.conf /etc/apt/apt.conf.d/*; do
  [ -f "$f" ] || continue
  # Proxy settings, and the validity checks that a snapshot mirror needs turned off.
  if grep -qiE 'proxy|Check-Valid-Until|Check-Date|Acquire::(http|https|Retries)' "$f"; then
    mkdir -p "$DIR/etc/apt/apt.conf.d"
    cp "$f" "$DIR/etc/apt/apt.conf.d/$(basename "$f")"
  fi
done
[ -f /etc/apt/auth.conf ] && install -m 600 /etc/apt/auth.conf "$DIR/etc/apt/auth.conf"
[ -d /etc/apt/auth.conf.d ] && cp -a /etc/apt/auth.conf.d "$DIR/etc/apt/"
cp -L /etc/resolv.conf "$DIR/etc/resolv.conf"
cp /etc/hosts "$DIR/etc/hosts"

mnt "$DIR/proc" -t proc proc
mnt "$DIR/sys" -t sysfs sysfs
mnt "$DIR/dev" --bind /dev
mnt "$DIR/dev/pts" --bind /dev/pts
mnt "$DIR/dev/shm" -t tmpfs -o mode=1777 tmpfs
mnt "$DIR/tmp" -t tmpfs -o mode=1777 tmpfs
mkdir -p "$CACHE/apt"
mnt "$DIR/var/cache/apt/archives" --bind "$CACHE/apt"

# ---- the repository: committed HEAD only ----
HEAD=$(git -C "$REPO" rev-parse HEAD)
if [ -n "$(git -C "$REPO" status --porcelain 2>/dev/null)" ]; then
  log "note: the checkout has uncommitted changes; they are NOT in the test (HEAD ${HEAD:0:12} is)"
fi
rm -rf --one-file-system "$DIR/root/sae" "$DIR/root/shared"
git -c safe.directory='*' clone -q --no-hardlinks "$REPO" "$DIR/root/sae"
git -c safe.directory='*' -C "$DIR/root/sae" checkout -q --detach "$HEAD"
if [ -d "$REPO/../shared" ]; then
  cp -a "$REPO/../shared" "$DIR/root/shared"
fi
log "cloned $(git -C "$REPO" log -1 --format='%h %s' HEAD | cut -c1-80)"

# ---- the README's two commands ----
in_root() {
  chroot "$DIR" /usr/bin/env -i HOME=/root TERM="${TERM:-dumb}" \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    bash -lc "cd /root/sae && $1"
}
T_DEMO=skipped; T_TEST=skipped; failed=()
step() {   # step NAME VAR
  local t0=$SECONDS
  log "running scripts/$1.sh in the root"
  # In the background, so that a TERM sent to this script runs the clean-up at once (bash
  # defers traps until a foreground child exits; `wait` is interrupted).
  in_root "scripts/$1.sh" &
  if wait $!; then printf -v "$2" '%s' "$((SECONDS - t0)) s"
  else printf -v "$2" '%s' "$((SECONDS - t0)) s, FAILED"; failed+=("$1.sh"); fi
  log "$1.sh: ${!2}"
}
if [ "$ONLY" != test ]; then step demo T_DEMO; fi
if [ "$ONLY" != demo ] && [ ${#failed[@]} = 0 ]; then step test T_TEST; fi

echo
log "debootstrap ${T_DEBOOTSTRAP}; demo.sh ${T_DEMO}; test.sh ${T_TEST} (commit ${HEAD:0:12})"
if [ ${#failed[@]} -gt 0 ]; then
  log "FAILED: ${failed[*]}"
  exit 1
fi
log "the quick start works on a fresh Debian 12"
exit 0
}
