#!/usr/bin/env bash
# Installs thinlayer: the binary, a man page per command and subcommand, and
# shell completions, each where man and the shells look. Idempotent: a second
# run leaves the same files (pages of commands that no longer exist go).
#
#   tools/install.sh [--prefix DIR] [--bin FILE]
#
#   --prefix DIR  where to install (env PREFIX; default /usr/local):
#                   DIR/bin/thinlayer
#                   DIR/share/man/man1/thinlayer.1, thinlayer-*.1
#                   DIR/share/bash-completion/completions/thinlayer
#                   DIR/share/zsh/site-functions/_thinlayer
#                   DIR/share/fish/vendor_completions.d/thinlayer.fish
#   --bin FILE    the binary to install (default: built with
#                 `cargo build --release`)
#
# DESTDIR (env), if set, is put before every path (for packaging). The pages
# and completions are made by the installed binary itself (`thinlayer man`,
# `thinlayer completions`), from its built-in defaults, not a configuration
# file's. Afterwards: `man thinlayer-volume-create`.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

prefix=${PREFIX:-/usr/local} bin=
while (($#)); do
  case $1 in
    --prefix) prefix=${2:?--prefix needs a directory}; shift ;;
    --prefix=*) prefix=${1#*=} ;;
    --bin) bin=${2:?--bin needs a file}; shift ;;
    --bin=*) bin=${1#*=} ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
[[ $prefix == /* ]] || { echo "install.sh: --prefix must be an absolute path, not '$prefix'" >&2; exit 2; }

if [[ -z $bin ]]; then
  (cd "$REPO" && cargo build --release --locked -p thinlayer --bin thinlayer)
  bin=${CARGO_TARGET_DIR:-$REPO/target}/release/thinlayer
fi
[[ -x $bin ]] || { echo "install.sh: $bin is not an executable" >&2; exit 1; }

dest=${DESTDIR:-}$prefix
mandir=$dest/share/man/man1
bashdir=$dest/share/bash-completion/completions
zshdir=$dest/share/zsh/site-functions
fishdir=$dest/share/fish/vendor_completions.d

install -d -m 0755 "$dest/bin" "$mandir" "$bashdir" "$zshdir" "$fishdir"
install -m 0755 "$bin" "$dest/bin/thinlayer"
tl=$dest/bin/thinlayer

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# /dev/null: no configuration file's values in the pages.
export THINLAYER_CONFIG=/dev/null
"$tl" man --dir "$tmp/man1" >/dev/null
"$tl" completions bash >"$tmp/thinlayer.bash"
"$tl" completions zsh >"$tmp/_thinlayer"
"$tl" completions fish >"$tmp/thinlayer.fish"

# Every page anew: one of a command that was removed must not stay behind.
rm -f "$mandir/thinlayer.1" "$mandir"/thinlayer-*.1
install -m 0644 "$tmp"/man1/*.1 "$mandir/"
install -m 0644 "$tmp/thinlayer.bash" "$bashdir/thinlayer"
install -m 0644 "$tmp/_thinlayer" "$zshdir/_thinlayer"
install -m 0644 "$tmp/thinlayer.fish" "$fishdir/thinlayer.fish"

echo "installed $tl, $(find "$mandir" -maxdepth 1 -name 'thinlayer*.1' | wc -l) man pages in $mandir, completions for bash, zsh and fish"

# man finds the pages without its index; the index serves apropos and
# whatis, for a prefix man searches.
if [[ -z ${DESTDIR:-} ]] && command -v manpath >/dev/null; then
  case ":$(manpath 2>/dev/null):" in
    *":$prefix/share/man:"*)
      # As the package manager's trigger does: the system's index, which
      # maps this prefix under its own names (a path given alone may miss).
      if command -v mandb >/dev/null && [[ $(id -u) == 0 ]]; then
        mandb -q 2>/dev/null ||
          echo "install.sh: note: mandb could not update the index (man still finds the pages; apropos may not)" >&2
      fi ;;
    *) echo "install.sh: note: $prefix/share/man is not in man's search path: add it to MANPATH" ;;
  esac
fi
