#!/usr/bin/env bash
# Builds the Debian package: target/debian/portico_VERSION-1_ARCH.deb.
#
#   1. both binaries, release profile;
#   2. what they generate from their own command line: the manual pages
#      portico(8) and portico-threaded(8) (`portico man`), and completions
#      for bash, zsh and fish (`portico completions SHELL`);
#   3. portico.toml(5) from docs/configuration.md, with go-md2man;
#   4. `cargo deb --no-build` (the package's contents: runtime-mio/Cargo.toml,
#      [package.metadata.deb]).
#
# Needs cargo-deb (`cargo install cargo-deb`) and go-md2man (`apt-get install
# go-md2man`). Honours CARGO_TARGET_DIR. Prints the package's path last.
set -euo pipefail
cd "$(dirname "$0")/.."

for tool in cargo-deb go-md2man perl gzip; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        case $tool in
            cargo-deb) how="cargo install cargo-deb" ;;
            *) how="apt-get install $tool" ;;
        esac
        echo "build-deb.sh: $tool is missing; install it with: $how" >&2
        exit 1
    fi
done

target=${CARGO_TARGET_DIR:-target}
cargo build --release -p portico-mio -p portico-std
bin="$target/release"
# cargo-deb finds the generated files under target/release (see the assets).
gen="$bin/packaging"
rm -rf "$gen"
mkdir -p "$gen/man" "$gen/bash" "$gen/zsh" "$gen/fish"

version=$("$bin/portico" --version | awk '{print $2}')
for b in portico portico-threaded; do
    "$bin/$b" man | gzip -9n >"$gen/man/$b.8.gz"
    "$bin/$b" completions bash >"$gen/bash/$b"
    "$bin/$b" completions zsh >"$gen/zsh/_$b"
    "$bin/$b" completions fish >"$gen/fish/$b.fish"
done

# portico.toml(5): a NAME section, then the reference without its title and
# table of contents, its links to anchors (#...) made plain text.
{
    printf '%% PORTICO.TOML 5 "" "Portico %s" "File Formats"\n\n' "$version"
    printf '# NAME\n\nportico.toml - the configuration file of portico(8)\n\n'
    printf '# DESCRIPTION\n\n'
    perl -0777 -pe '
        s/\A# [^\n]*\n//;
        s/^Contents:\n.*?(?=^## )//ms;
        s/\[((?:`[^`]*`|[^\]`])*)\]\(#[^)]*\)/$1/g;
    ' docs/configuration.md
    printf '\n# SEE ALSO\n\nportico(8)\n'
} | go-md2man | perl packaging/man-tables.pl | gzip -9n >"$gen/man/portico.toml.5.gz"

# Stripped: the release profile keeps line tables for development.
# cargo deb prints the package's path.
deb=$(cargo deb -p portico-mio --no-build --strip | tail -n 1)
[ -f "$deb" ] || { echo "build-deb.sh: cargo deb made no $deb" >&2; exit 1; }
echo "$deb"
